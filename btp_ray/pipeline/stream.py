"""Pipelined sample → test: sampling of problem batch i+1 runs while batch i's candidates execute in the sandbox
pool, driven by Ray object refs rather than a sequential loop.

All sampling batches are queued on the samplers at once (an actor works through its queue back to back); the moment a
batch's candidates arrive, their test jobs go to the executor pool, and the moment a batch's results are complete it
is handed to the caller (who persists it). Busy intervals are recorded per resource so the caller can report phase
times, idle time and the overlap ratio (iteration wall ÷ slowest phase).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from btp_ray.data.types import Problem
from btp_ray.execution import ExecutionJob, ExecutionResult
from btp_ray.sampling import Candidate, GenerationParams


class SamplingService(Protocol):
    """What the pipeline needs of a sampler pool: start generation for a batch, get a ref to its candidates."""

    def submit(self, problems: Sequence[Problem], params: GenerationParams) -> Any: ...


class ExecutionService(Protocol):
    def submit(self, jobs: Sequence[ExecutionJob]) -> list[Any]: ...


@dataclass
class TestedBatch:
    """One problem batch after sampling and testing; ``results[i][j]`` belongs to ``candidates[i][j]``."""

    __test__ = False

    index: int
    problems: list[Problem]
    candidates: list[list[Candidate]]
    results: list[list[ExecutionResult]]


@dataclass
class BusyClock:
    """Union of busy intervals of one resource (overlapping intervals of the same resource count once)."""

    intervals: list[tuple[float, float]] = field(default_factory=list)

    def add(self, start: float, end: float) -> None:
        if end > start:
            self.intervals.append((start, end))

    def busy_seconds(self) -> float:
        total, current_start, current_end = 0.0, None, None
        for start, end in sorted(self.intervals):
            if current_end is None or start > current_end:
                if current_end is not None:
                    total += current_end - current_start
                current_start, current_end = start, end
            else:
                current_end = max(current_end, end)
        if current_end is not None:
            total += current_end - current_start
        return total


@dataclass
class StreamTimings:
    """Phase busy time and idle time of the sample → test stream."""

    wall_s: float = 0.0
    sample_busy_s: float = 0.0
    execute_busy_s: float = 0.0
    candidates: int = 0
    tests: int = 0

    @property
    def sequential_s(self) -> float:
        return self.sample_busy_s + self.execute_busy_s

    @property
    def overlap_ratio(self) -> float:
        """Wall time over the slowest phase: 1.0 is perfect overlap, 2.0 is fully sequential for equal phases."""
        slowest = max(self.sample_busy_s, self.execute_busy_s)
        return self.wall_s / slowest if slowest > 0 else 1.0

    def to_dict(self) -> dict[str, float]:
        return {
            "wall_s": self.wall_s,
            "sample_busy_s": self.sample_busy_s,
            "execute_busy_s": self.execute_busy_s,
            "sample_idle_s": max(0.0, self.wall_s - self.sample_busy_s),
            "execute_idle_s": max(0.0, self.wall_s - self.execute_busy_s),
            "overlap_ratio": self.overlap_ratio,
            "candidates": self.candidates,
            "tests": self.tests,
        }


def chunk(items: Sequence[Any], size: int) -> list[list[Any]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def jobs_for(problem: Problem, candidates: Sequence[Candidate], timeout_s: float | None = None) -> list[ExecutionJob]:
    return [
        ExecutionJob(program=c.program, tests=problem.tests, test_setup=problem.test_setup, timeout_s=timeout_s)
        for c in candidates
    ]


def sample_and_test(
    sampler: SamplingService,
    executor: ExecutionService,
    problems: Sequence[Problem],
    params: GenerationParams,
    *,
    batch_size: int,
    timings: StreamTimings | None = None,
    on_sampled: Callable[[int, int], None] | None = None,
) -> Iterator[TestedBatch]:
    """Yield each problem batch once its candidates are sampled and tested, in completion order.

    ``on_sampled(batch_index, num_candidates)`` is called as soon as a batch's candidates arrive (for progress).
    """
    import ray

    timings = timings if timings is not None else StreamTimings()
    batches = chunk(list(problems), batch_size)
    if not batches:
        return
    start = time.perf_counter()
    sample_clock, execute_clock = BusyClock(), BusyClock()
    sampling: dict[Any, int] = {}
    for index, batch in enumerate(batches):
        sampling[sampler.submit(batch, params)] = index
    executing: dict[int, tuple[list[Any], float]] = {}
    ref_to_batch: dict[Any, int] = {}
    candidates_of: dict[int, list[list[Candidate]]] = {}
    try:
        while sampling or executing:
            waiting = list(sampling) + list(ref_to_batch)
            ready, _ = ray.wait(waiting, num_returns=1)
            now = time.perf_counter()
            ref = ready[0]
            if ref in sampling:
                index = sampling.pop(ref)
                candidates = ray.get(ref)
                sample_clock.add(start, now)  # one sampler queue works back to back from the start
                candidates_of[index] = candidates
                jobs = [job for p, cs in zip(batches[index], candidates, strict=True) for job in jobs_for(p, cs)]
                timings.candidates += len(jobs)
                timings.tests += sum(len(job.tests) for job in jobs)
                if on_sampled is not None:
                    on_sampled(index, len(jobs))
                refs = executor.submit(jobs)
                executing[index] = (refs, now)
                ref_to_batch.update({r: index for r in refs})
                if not refs:
                    yield from _finish(index, batches, candidates_of, [], executing, execute_clock, now)
                continue
            index = ref_to_batch.pop(ref)
            refs, _ = executing[index]
            if any(r in ref_to_batch for r in refs):
                continue
            results = ray.get(refs)
            yield from _finish(index, batches, candidates_of, results, executing, execute_clock, now)
    finally:
        timings.wall_s += time.perf_counter() - start
        timings.sample_busy_s += sample_clock.busy_seconds()
        timings.execute_busy_s += execute_clock.busy_seconds()


def _finish(
    index: int,
    batches: list[list[Problem]],
    candidates_of: dict[int, list[list[Candidate]]],
    flat_results: list[ExecutionResult],
    executing: dict[int, tuple[list[Any], float]],
    execute_clock: BusyClock,
    now: float,
) -> Iterator[TestedBatch]:
    _, submitted = executing.pop(index)
    execute_clock.add(submitted, now)
    candidates = candidates_of.pop(index)
    results: list[list[ExecutionResult]] = []
    offset = 0
    for group in candidates:
        results.append(list(flat_results[offset : offset + len(group)]))
        offset += len(group)
    yield TestedBatch(index=index, problems=batches[index], candidates=candidates, results=results)
