"""The numbers a BTP run reports: an iteration's sampling summary (from its logged records), the one-line progress
summary, and the run's final results with its cost. Pure functions of the run's records and history."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from btp_ray.data import Problem
from btp_ray.experiment_config import ExperimentConfig
from btp_ray.metrics import CostRecord, p2value_stats
from btp_ray.pipeline.records import TestedCandidate
from btp_ray.pipeline.run_dir import CANDIDATES
from btp_ray.pipeline.stream import StreamTimings


def sample_summary(
    records: Sequence[TestedCandidate], num_problems: int, timings: StreamTimings | None
) -> dict[str, Any]:
    """One iteration's sampled and tested candidates: pass rates, P2Value (overall, passing, failing), tokens."""
    passing = [t for t in records if t.passed]
    return {
        "candidates": len(records),
        "problems": num_problems,
        "mean_pass_rate": sum(t.pass_rate for t in records) / len(records) if records else 0.0,
        "solved_candidates": len(passing),
        "problems_with_a_full_pass": len({t.task_id for t in passing}),
        "p2value": p2value_stats([t.p2value for t in records if t.p2value is not None]),
        "p2value_passing": p2value_stats([t.p2value for t in passing if t.p2value is not None]),
        "p2value_failing": p2value_stats([t.p2value for t in records if not t.passed and t.p2value is not None]),
        "timings": timings.to_dict() if timings is not None else None,
        "tokens_generated": sum(t.candidate.num_tokens for t in records),
    }


def line_summary(record: dict[str, Any]) -> dict[str, Any]:
    """What the progress line prints for one iteration's metrics record."""
    sample = record.get("sample", {})
    evaluation = record.get("eval", {})
    train = record.get("train", {})
    return {
        "candidates": sample.get("candidates", 0),
        "train_mean_pass_rate": sample.get("mean_pass_rate"),
        "p2value_mean": sample.get("p2value", {}).get("mean"),
        "buffer_size": record.get("buffer", {}).get("size", 0),
        "loss": train.get("metrics", {}).get("final_loss"),
        "eval_pass_at_1": evaluation.get("greedy_pass_at_1"),
        "rsr": evaluation.get("rsr"),
        "wall_s": record.get("wall_s", 0.0),
    }


def run_results(
    config: ExperimentConfig,
    history: Sequence[dict[str, Any]],
    train_problems: Sequence[Problem],
    eval_problems: Sequence[Problem],
    held_out_guard: dict[str, Any] | None,
) -> dict[str, Any]:
    """``btp_results.json``: the baseline and final evaluations, every iteration, the cost."""
    ordered = sorted(history, key=lambda h: h["iteration"])
    evals = [h for h in ordered if "eval" in h]
    return {
        "experiment": config.name,
        "mode": config.mode.value,
        "dataset": config.dataset,
        "source_model": config.sampling.model,
        "target_model": config.training.base_model if config.training else None,
        "train_problems": [p.task_id for p in train_problems],
        "eval_problems": [p.task_id for p in eval_problems],
        "n_iterations": config.n_iterations,
        "baseline": evals[0]["eval"] if evals and evals[0]["iteration"] == 0 else None,
        "final": evals[-1]["eval"] if evals else None,
        "iterations": ordered,
        "cost": run_cost(ordered).to_dict(),
        "candidates_file": CANDIDATES,
        "held_out_guard": held_out_guard,
    }


def run_cost(history: Sequence[dict[str, Any]]) -> CostRecord:
    """The run's cost, summed over the iterations' recorded phase times and generated tokens."""
    cost = CostRecord()
    for record in history:
        for phase, seconds in record.get("phase_s", {}).items():
            cost.add_phase(phase, seconds)
        cost.add_tokens(tokens_out=record.get("sample", {}).get("tokens_generated", 0))
    return cost
