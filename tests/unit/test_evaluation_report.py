"""Evaluation summaries (solved means every test passed; RSR against the baseline) and the report, whose numbers all
come from the results it is given."""

from __future__ import annotations

import re

import pytest

from btp_ray.data import Problem, TestCase
from btp_ray.execution import ExecutionResult, ExecutionStatus
from btp_ray.experiment_config import ExperimentConfig
from btp_ray.pipeline.evaluation import ProblemEval, greedy_params, sample_params, summarize_evaluation
from btp_ray.pipeline.report import render_report
from btp_ray.sampling import Candidate, FinishReason, GenerationParams, SamplerIdentity, SamplingStrategy


def problem(task_id: str) -> Problem:
    return Problem(
        task_id=task_id,
        prompt="def f(x):\n",
        entry_point="f",
        tests=(TestCase.assertion("assert f(1) == 2"), TestCase.assertion("assert f(2) == 3")),
        canonical_solution="    return x + 1\n",
        metadata={"solution_is_completion": True},
    )


def run_result(task_id: str, program: str, per_test: tuple[bool, ...]) -> tuple[Candidate, ExecutionResult]:
    candidate = Candidate(
        task_id=task_id,
        completion=program,
        program=program,
        num_tokens=5,
        finish_reason=FinishReason.STOP,
        sampler=SamplerIdentity("hf", "m"),
    )
    status = ExecutionStatus.PASSED if all(per_test) else ExecutionStatus.FAILED
    return candidate, ExecutionResult(status=status, per_test=per_test)


def test_summary_counts_only_full_passes_and_computes_rsr() -> None:
    a, b = problem("A"), problem("B")
    evals = [
        ProblemEval(a, greedy=run_result("A", "def f(x):\n    return x + 1\n", (True, True))),
        ProblemEval(
            b,
            greedy=run_result("B", "def f(x):\n    return 2\n", (True, False)),
            samples=[run_result("B", "x", (True, False)), run_result("B", "y", (True, True))],
        ),
    ]
    mixed = summarize_evaluation(evals, baseline_accuracy=None)  # A has 1 candidate (greedy only), B has 2
    assert set(mixed["pass_at_k"]) == {"pass@1"} and mixed["rsr"] is None
    evals[0].samples = [run_result("A", "x", (False, False)), run_result("A", "y", (True, True))]
    summary = summarize_evaluation(evals, baseline_accuracy=0.25)
    assert summary["solved"] == 1 and summary["accuracy"] == 0.5  # B's greedy passed one of two tests: not solved
    assert summary["greedy_pass_at_1"] == 0.5
    assert summary["pass_at_k"]["pass@1"] == pytest.approx(0.5)
    assert summary["exact_match"] == 0.5  # A's greedy program is the reference
    assert summary["rsr"] == pytest.approx(100 * (50 - 25) / 75)
    assert summary["greedy_mean_pass_rate"] == pytest.approx(0.75)


def test_eval_params() -> None:
    base = GenerationParams(num_candidates=4, max_new_tokens=100, temperature=0.0)
    greedy = greedy_params(base, 50)
    assert (greedy.strategy, greedy.num_candidates, greedy.max_new_tokens) == (SamplingStrategy.GREEDY, 1, 50)
    sampled = sample_params(base, 7, seed=3)
    assert (sampled.strategy, sampled.num_candidates, sampled.temperature, sampled.seed) == (
        SamplingStrategy.SAMPLE, 7, 0.8, 3,
    )  # fmt: skip


def test_report_numbers_come_from_the_results() -> None:
    eval_summary = {
        "num_problems": 3, "greedy_pass_at_1": 0.333, "pass_at_k": {"pass@1": 0.333}, "mean_pass_rate": 0.5,
        "solved": 1, "exact_match": 0.0, "rsr": 12.5,
    }  # fmt: skip
    results = {
        "experiment": "exp", "mode": "finetune", "dataset": "humaneval", "source_model": "s", "target_model": "t",
        "train_problems": ["a", "b"], "eval_problems": ["c", "d", "e"],
        "iterations": [
            {"iteration": 0, "eval": {**eval_summary, "rsr": None}},
            {"iteration": 1, "eval": eval_summary,
             "sample": {"candidates": 6, "mean_pass_rate": 0.25, "solved_candidates": 1,
                        "problems_with_a_full_pass": 1, "p2value": {"mean": 0.61}, "timings": None},
             "buffer": {"size": 6},
             "train": {"adapter": "btp-iter1-abc", "examples": 4, "distinct_examples": 3, "passing_examples": 1,
                       "metrics": {"first_loss": 1.5, "final_loss": 0.75}, "tokens_per_second": 90.0,
                       "overhead_s": 15.0}},
        ],
        "cost": {"phase_seconds": {"sample": 10.0, "train": 20.0}},
        "candidates_file": "candidates.jsonl",
    }  # fmt: skip
    report = render_report(ExperimentConfig(), results)
    assert "| 1 | 3 | 0.333 | – | – | 0.500 | 1 | 0.000 | 12.500 |" in report
    assert "| 1 | 6 | 0.250 | 1 | 1 | 0.610 | 6 | – |" in report
    assert "| 1 | btp-iter1-abc | 4 | 3 | 1 | 1.500 | 0.750 | 90.000 | 15.000 |" in report
    # every table is well formed: each row has as many cells as its header
    for block in re.findall(r"(\|.*\|\n\|[-|]+\|\n(?:\|.*\|\n?)+)", report):
        lines = block.strip().splitlines()
        widths = {line.count("|") for line in lines}
        assert len(widths) == 1, block
