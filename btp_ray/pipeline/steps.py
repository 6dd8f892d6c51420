"""The steps of BTP that the run (:mod:`btp_ray.pipeline.runner`) and the studies (:mod:`btp_ray.experiments`) share:
sample and test a problem set into :class:`~btp_ray.pipeline.records.TestedCandidate` records, and evaluate whatever
a sampler serves on held-out problems.

The run streams the records batch by batch into its candidate log (``tested_batches``); a study collects them per
problem (``collect``) to build a candidate pool, the baseline's samples or an evaluation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from btp_ray.data import Problem
from btp_ray.experiment_config import ExperimentConfig
from btp_ray.metrics import CostRecord
from btp_ray.pipeline.evaluation import ProblemEval, greedy_params, summarize_evaluation
from btp_ray.pipeline.records import HELD_OUT, TestedCandidate, records_of
from btp_ray.pipeline.stream import StreamTimings, sample_and_test
from btp_ray.sampling import GenerationParams


def tested_batches(
    source: Any,
    executor: Any,
    problems: Sequence[Problem],
    params: GenerationParams,
    *,
    batch_size: int,
    timings: StreamTimings | None = None,
    on_sampled: Callable[[int, int], None] | None = None,
    **where: Any,
) -> Iterator[tuple[list[Problem], list[TestedCandidate]]]:
    """Sample ``params.num_candidates`` candidates per problem from ``source`` and test each in ``executor``, sampling
    and testing pipelined; yields each batch's problems and records (``where``: iteration, phase, kind)."""
    for batch in sample_and_test(
        source, executor, problems, params, batch_size=batch_size, timings=timings, on_sampled=on_sampled
    ):
        yield batch.problems, records_of(batch, **where)


@dataclass
class Collected:
    """Every problem's tested candidates (in the problems' order, candidates by rank), with the stream's timings."""

    outcomes: dict[str, list[TestedCandidate]]
    timings: StreamTimings = field(default_factory=StreamTimings)

    @property
    def records(self) -> list[TestedCandidate]:
        return [t for tested in self.outcomes.values() for t in tested]

    @property
    def tokens_generated(self) -> int:
        return sum(t.candidate.num_tokens for t in self.records)

    def cost(self, cost: CostRecord | None = None) -> CostRecord:
        """Sampling and testing time and generated tokens, added to ``cost`` (a new record by default)."""
        cost = cost or CostRecord()
        cost.add_phase("sample", self.timings.sample_busy_s)
        cost.add_phase("execute", self.timings.execute_busy_s)
        cost.add_tokens(tokens_out=self.tokens_generated)
        return cost


def collect(
    source: Any, executor: Any, problems: Sequence[Problem], params: GenerationParams, *, batch_size: int, **where: Any
) -> Collected:
    """:func:`tested_batches` gathered per problem."""
    timings = StreamTimings()
    found: dict[str, list[TestedCandidate]] = {p.task_id: [] for p in problems}
    for _, records in tested_batches(
        source, executor, problems, params, batch_size=batch_size, timings=timings, **where
    ):
        for record in records:
            found[record.task_id].append(record)
    return Collected(outcomes=found, timings=timings)


def evaluate_greedy(
    model: Any,
    executor: Any,
    problems: Sequence[Problem],
    config: ExperimentConfig,
    *,
    baseline_accuracy: float | None = None,
) -> tuple[dict[str, Any], Collected]:
    """Greedy pass@1, mean pass rate and RSR of whatever ``model`` currently serves, on ``problems``."""
    params = greedy_params(config.generation, config.eval_max_new_tokens)
    started = time.perf_counter()
    collected = collect(
        model, executor, problems, params, batch_size=config.problem_batch_size, phase=HELD_OUT, kind="greedy"
    )
    evals = [evaluation_of(p, collected.outcomes[p.task_id]) for p in problems]
    summary = summarize_evaluation(evals, baseline_accuracy)
    summary["wall_s"] = time.perf_counter() - started
    return summary, collected


def evaluation_of(problem: Problem, records: Sequence[TestedCandidate]) -> ProblemEval:
    """One problem's evaluation from its held-out records: the greedy one, and the samples for pass@k."""
    evaluation = ProblemEval(problem=problem)
    for t in records:
        if t.kind == "greedy":
            evaluation.greedy = (t.candidate, t.result)
        else:
            evaluation.samples.append((t.candidate, t.result))
    return evaluation
