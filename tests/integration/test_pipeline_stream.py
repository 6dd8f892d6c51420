"""The pipelined sample → test stream on a local Ray cluster: sampling of batch i+1 overlaps testing of batch i, every
candidate comes back tested exactly once, and the timings add up.

The sampler here is a test double (a Ray actor that sleeps, then returns fixed programs) so that the delays are
known; the executor pool and its sandboxes are the real ones.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest

from btp_ray.data import Problem, TestCase
from btp_ray.execution import ExecutionStatus, ExecutorPool, PoolConfig, SandboxConfig
from btp_ray.pipeline.stream import BusyClock, StreamTimings, sample_and_test
from btp_ray.sampling import Candidate, FinishReason, GenerationParams, SamplerIdentity

SAMPLE_DELAY_S = 1.5
PROGRAM_DELAY_S = 0.6


class SleepySampler:
    """Sleeps ``delay`` per batch, then proposes a correct and a wrong program per problem, each sleeping on load."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def generate(self, problems: Sequence[Problem], params: GenerationParams) -> list[list[Candidate]]:
        time.sleep(self.delay)
        identity = SamplerIdentity(backend="test", model="sleepy")
        out = []
        for problem in problems:
            programs = [
                f"import time\ntime.sleep({PROGRAM_DELAY_S})\ndef {problem.entry_point}(x):\n    return x + 1\n",
                f"import time\ntime.sleep({PROGRAM_DELAY_S})\ndef {problem.entry_point}(x):\n    return x\n",
            ]
            out.append(
                [
                    Candidate(
                        task_id=problem.task_id,
                        completion=code,
                        program=code,
                        num_tokens=10,
                        finish_reason=FinishReason.STOP,
                        sampler=identity,
                        rank=rank,
                        mean_logprob=-0.1 * (rank + 1),
                        possibility=0.9 - 0.1 * rank,
                    )
                    for rank, code in enumerate(programs)
                ]
            )
        return out


class ActorSampling:
    def __init__(self, actor) -> None:
        self.actor = actor

    def submit(self, problems: Sequence[Problem], params: GenerationParams):
        return self.actor.generate.remote(list(problems), params)


def make_problems(n: int) -> list[Problem]:
    return [
        Problem(
            task_id=f"T/{i}",
            prompt=f"def inc_{i}(x):\n",
            entry_point=f"inc_{i}",
            tests=(TestCase.assertion(f"assert inc_{i}(1) == 2"), TestCase.assertion(f"assert inc_{i}(5) == 6")),
        )
        for i in range(n)
    ]


def test_busy_clock_merges_overlapping_intervals() -> None:
    clock = BusyClock()
    for start, end in [(0, 2), (1, 3), (5, 6), (5.5, 5.7), (7, 7)]:
        clock.add(start, end)
    assert clock.busy_seconds() == pytest.approx(4.0)


def test_sampling_and_testing_overlap(ray_cluster) -> None:
    ray = ray_cluster
    sampler = ActorSampling(ray.remote(SleepySampler).options(num_cpus=0.5).remote(SAMPLE_DELAY_S))
    problems = make_problems(4)
    with ExecutorPool(
        SandboxConfig(timeout_s=5), pool_config=PoolConfig(num_executors=1, cpus_per_executor=0.5)
    ) as pool:
        timings = StreamTimings()
        sampled_order: list[int] = []
        batches = list(
            sample_and_test(
                sampler,
                pool,
                problems,
                GenerationParams(num_candidates=2),
                batch_size=1,
                timings=timings,
                on_sampled=lambda index, n: sampled_order.append(index),
            )
        )
    assert sorted(b.index for b in batches) == [0, 1, 2, 3]
    assert sorted(sampled_order) == [0, 1, 2, 3]
    assert timings.candidates == 8 and timings.tests == 16
    for batch in batches:
        (results,) = batch.results
        assert [r.status for r in results] == [ExecutionStatus.PASSED, ExecutionStatus.FAILED]
        assert [r.pass_rate for r in results] == [1.0, 0.0]
    # sampling alone takes 4 x 1.5 s and testing alone >= 4 x 2 x 0.6 s; run back to back they would add up
    assert timings.sample_busy_s >= 4 * SAMPLE_DELAY_S * 0.95
    assert timings.execute_busy_s >= 4 * 2 * PROGRAM_DELAY_S * 0.95
    assert timings.wall_s < 0.8 * timings.sequential_s
    assert timings.overlap_ratio < 1.5


def test_empty_problem_list_yields_nothing(ray_cluster) -> None:
    ray = ray_cluster
    sampler = ActorSampling(ray.remote(SleepySampler).options(num_cpus=0.5).remote(0.0))
    with ExecutorPool(SandboxConfig(), pool_config=PoolConfig(num_executors=1, cpus_per_executor=0.5)) as pool:
        assert list(sample_and_test(sampler, pool, [], GenerationParams(), batch_size=2)) == []
