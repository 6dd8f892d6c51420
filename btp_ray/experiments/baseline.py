"""Step 1, the sample-and-filter baseline: n samples per problem, every one tested in the sandbox; pass@1/5/10 by the
unbiased estimator, the mean pass rate, and the accuracy of the sample filter (pick a sample that passes every test,
when there is one), with the run's cost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from btp_ray.data.types import Problem
from btp_ray.experiment_config import ExperimentConfig
from btp_ray.experiments.common import RUN_INFO, run_record, write_json
from btp_ray.metrics import ProblemOutcome, is_solved, p2value_stats, pass_at_k, summarize
from btp_ray.pipeline.evaluation import PASS_AT_K, sample_params
from btp_ray.pipeline.records import BASELINE, TestedCandidate
from btp_ray.pipeline.services import Services
from btp_ray.pipeline.steps import Collected, collect
from btp_ray.replay import PossibilityMode

logger = logging.getLogger(__name__)

RESULTS_FILE = "baseline_experiment_results.json"
CANDIDATES_FILE = "candidates.jsonl"


@dataclass(frozen=True)
class BaselineSettings:
    """``num_samples`` samples per problem (the original suite's ``--num_samples``), drawn with the run's seed."""

    num_samples: int = 10

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1 (samples per problem), got {self.num_samples}")


def filter_pick(samples: Sequence[TestedCandidate]) -> int:
    """Index of the sample the filter keeps: the best-ranked one that passes every test, else the best-ranked one
    with the highest pass rate (the filter can only choose what the tests reveal)."""
    passing = [i for i, sample in enumerate(samples) if is_solved(sample.pass_rate)]
    if passing:
        return passing[0]
    best = max(sample.pass_rate for sample in samples)
    return next(i for i, sample in enumerate(samples) if sample.pass_rate == best)


def summarize_baseline(
    problems: list[Problem],
    collected: Collected,
    *,
    num_samples: int,
    alpha: float,
    possibility: PossibilityMode | str = PossibilityMode.GEOMETRIC,
) -> dict[str, Any]:
    """The baseline's metrics from its tested samples (pure: no Ray, no model); P2Value with the run's α and
    possibility mode."""
    outcomes, per_problem, values_pass, values_fail = [], [], [], []
    for problem in problems:
        samples = collected.outcomes[problem.task_id]
        pick = filter_pick(samples)
        rates = tuple(sample.pass_rate for sample in samples)
        outcomes.append(ProblemOutcome(task_id=problem.task_id, pass_rates=rates, selected_pass_rate=rates[pick]))
        per_problem.append(
            {
                "task_id": problem.task_id,
                "samples": len(samples),
                "fully_passing": sum(1 for r in rates if is_solved(r)),
                "mean_pass_rate": sum(rates) / len(rates),
                "filter_pick_rank": samples[pick].candidate.rank,
                "filter_pick_pass_rate": rates[pick],
            }
        )
        for sample in samples:
            value = sample.scored(alpha, possibility).p2value
            (values_pass if is_solved(sample.pass_rate) else values_fail).append(value)
    summary = summarize(outcomes, ks=PASS_AT_K)
    n = summary.samples_per_problem
    curve = {str(k): sum(pass_at_k(o.n, o.c, k) for o in outcomes) / len(outcomes) for k in range(1, n + 1)}
    return {
        "num_problems": summary.num_problems,
        "samples_per_problem": n,
        "requested_samples": num_samples,
        "pass_at_k": {f"pass@{k}": v for k, v in summary.pass_at_k.items()},
        "pass_at_k_curve": curve,
        "mean_pass_rate": summary.mean_pass_rate,
        "filter_accuracy": summary.accuracy,
        "filter_solved": summary.solved,
        "filter_mean_pass_rate": sum(p["filter_pick_pass_rate"] for p in per_problem) / len(per_problem),
        "problems_with_a_full_pass": summary.any_solved,
        "p2value_alpha": alpha,
        "p2value_passing": p2value_stats(values_pass),
        "p2value_failing": p2value_stats(values_fail),
        "per_problem": per_problem,
    }


def run_baseline(
    config: ExperimentConfig, settings: BaselineSettings, services: Services, problems: list[Problem], output_dir: Path
) -> dict[str, Any]:
    """Sample, test and summarize ``problems`` into ``output_dir``; returns (and writes) the results."""
    output_dir.mkdir(parents=True, exist_ok=True)
    seeds = {"sampling": config.seed}
    write_json(output_dir / RUN_INFO, run_record(config, seeds, {"baseline": {"num_samples": settings.num_samples}}))
    params = sample_params(config.generation, settings.num_samples, config.seed, config.eval_max_new_tokens)
    started = time.perf_counter()
    collected = collect(
        services.model, services.executor, problems, params, batch_size=config.problem_batch_size,
        phase=BASELINE, kind="sample",
    )  # fmt: skip
    wall = time.perf_counter() - started
    _write_candidates(output_dir / CANDIDATES_FILE, collected)
    results = summarize_baseline(
        problems,
        collected,
        num_samples=settings.num_samples,
        alpha=config.replay.alpha,
        possibility=config.replay.possibility,
    )
    cost = collected.cost()
    results.update(
        {
            "experiment": "baseline",
            "model": config.sampling.model,
            "dataset": config.dataset,
            "problems": [p.task_id for p in problems],
            "generation": params.to_dict(),
            "seeds": seeds,
            "wall_s": wall,
            "timings": collected.timings.to_dict(),
            "cost": cost.to_dict(),
            "candidates_file": CANDIDATES_FILE,
        }
    )
    write_json(output_dir / RESULTS_FILE, results)
    logger.info(
        "baseline: pass@1 %.3f, filter accuracy %.3f, mean pass rate %.3f over %d problems",
        results["pass_at_k"]["pass@1"],
        results["filter_accuracy"],
        results["mean_pass_rate"],
        results["num_problems"],
    )
    return results


def _write_candidates(path: Path, collected: Collected) -> None:
    import json

    from btp_ray.io import atomic_write_text

    lines = [json.dumps(t.to_line(), ensure_ascii=False, default=str) for t in collected.records]
    atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))
