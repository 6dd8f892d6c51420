"""Pipeline overlap: sampling of problem batch i+1 while batch i is tested, against the original suite's structure
(sample every problem, then test every candidate).

Two workloads, each run both ways in the same process on the same local Ray cluster:
- ``embedded``: the default job's sample → test step for real (SmolLM2-135M beam search on HumanEval problems, the
  real sandbox pool). On a CPU sampling dominates, so the best possible wall time is about the sampling time.
- ``balanced``: a sampler that sleeps a fixed time per batch and programs that sleep while loading, so sampling and
  testing cost about the same; this is where overlapping matters most.

For each: wall time, busy time per phase, the overlap ratio (wall ÷ slowest phase; target ≤ 1.2) and the speed-up
over sequential. Prints a table, then one JSON line.

Run: ``python benchmarks/pipeline_overlap.py [--problems 4 --beams 2 --max-new-tokens 64]``
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from btp_ray.data import Problem, TestCase, load_problems
from btp_ray.execution import ExecutorPool, PoolConfig, SandboxConfig
from btp_ray.pipeline.stream import StreamTimings, jobs_for, sample_and_test
from btp_ray.sampling import (
    Candidate,
    FinishReason,
    GenerationParams,
    SamplerConfig,
    SamplerIdentity,
    SamplerPool,
)
from btp_ray.sampling.pool import SamplerPoolConfig


class SleepySampler:
    """Sleeps ``delay`` per batch; proposes one program per problem that sleeps ``load_s`` when loaded."""

    def __init__(self, delay: float, load_s: float) -> None:
        self.delay, self.load_s = delay, load_s

    def generate(self, problems: Sequence[Problem], params: GenerationParams) -> list[list[Candidate]]:
        time.sleep(self.delay)
        code = f"import time\ntime.sleep({self.load_s})\ndef f(x):\n    return x + 1\n"
        identity = SamplerIdentity("bench", "sleepy")
        return [
            [Candidate(p.task_id, code, code, 5, FinishReason.STOP, identity) for _ in range(params.num_candidates)]
            for p in problems
        ]


class ActorSampling:
    def __init__(self, actor) -> None:
        self.actor = actor

    def submit(self, problems, params):
        return self.actor.generate.remote(list(problems), params)

    def generate(self, problems, params):
        import ray

        return ray.get(self.submit(problems, params))


def sequential(sampler, executor: ExecutorPool, problems: list[Problem], params: GenerationParams, batch: int):
    """The original suite's structure: all sampling first, then all testing."""
    start = time.perf_counter()
    candidates: list[list[Candidate]] = []
    for offset in range(0, len(problems), batch):
        candidates.extend(sampler.generate(problems[offset : offset + batch], params))
    sampled = time.perf_counter()
    jobs = [job for p, cs in zip(problems, candidates, strict=True) for job in jobs_for(p, cs)]
    executor.run(jobs)
    end = time.perf_counter()
    return {"wall_s": end - start, "sample_busy_s": sampled - start, "execute_busy_s": end - sampled}


def pipelined(sampler, executor: ExecutorPool, problems: list[Problem], params: GenerationParams, batch: int):
    timings = StreamTimings()
    for _ in sample_and_test(sampler, executor, problems, params, batch_size=batch, timings=timings):
        pass
    return timings.to_dict()


def measure(name: str, sampler, executor, problems, params, batch: int) -> dict:
    seq = sequential(sampler, executor, problems, params, batch)
    pipe = pipelined(sampler, executor, problems, params, batch)
    slowest = max(pipe["sample_busy_s"], pipe["execute_busy_s"])
    return {
        "workload": name,
        "problems": len(problems),
        "sequential_wall_s": seq["wall_s"],
        "pipelined_wall_s": pipe["wall_s"],
        "sample_busy_s": pipe["sample_busy_s"],
        "execute_busy_s": pipe["execute_busy_s"],
        "overlap_ratio": pipe["wall_s"] / slowest if slowest else 1.0,
        "sequential_ratio": seq["wall_s"] / max(seq["sample_busy_s"], seq["execute_busy_s"]),
        "speedup": seq["wall_s"] / pipe["wall_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=4)
    parser.add_argument("--beams", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--balanced-delay", type=float, default=1.5, help="seconds per sampling batch")
    parser.add_argument("--skip-embedded", action="store_true")
    args = parser.parse_args()

    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        with ExecutorPool(SandboxConfig(), pool_config=PoolConfig(num_executors=1, cpus_per_executor=0.5)) as pool:
            sleepy = ActorSampling(
                ray.remote(SleepySampler).options(num_cpus=0.5).remote(args.balanced_delay, args.balanced_delay / 2)
            )
            balanced = [
                Problem(task_id=f"B/{i}", prompt="", entry_point="f", tests=(TestCase.assertion("assert f(1) == 2"),))
                for i in range(6)
            ]
            rows.append(measure("balanced", sleepy, pool, balanced, GenerationParams(num_candidates=2), 1))
            if not args.skip_embedded:
                problems = load_problems("humaneval", limit=args.problems)
                params = GenerationParams(num_candidates=args.beams, max_new_tokens=args.max_new_tokens)
                sampler = SamplerPool(SamplerConfig(), SamplerPoolConfig(num_actors=1, num_cpus_per_actor=0.5))
                try:
                    sampler.generate(problems[:1], GenerationParams(num_candidates=1, max_new_tokens=4))  # warm up
                    rows.append(measure("embedded", sampler, pool, problems, params, 1))
                finally:
                    sampler.close()
    finally:
        ray.shutdown()

    header = (
        f"{'workload':<10} {'seq wall':>9} {'pipe wall':>9} {'sample':>8} {'execute':>8} {'overlap':>8} {'speedup':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['workload']:<10} {r['sequential_wall_s']:>8.1f}s {r['pipelined_wall_s']:>8.1f}s "
            f"{r['sample_busy_s']:>7.1f}s {r['execute_busy_s']:>7.1f}s {r['overlap_ratio']:>8.2f} {r['speedup']:>7.2f}x"
        )
    print(
        json.dumps(
            {
                "benchmark": "pipeline_overlap",
                "rows": rows,
                "target_overlap_ratio": 1.2,
                "meets_target": all(r["overlap_ratio"] <= 1.2 for r in rows),
            }
        )
    )


if __name__ == "__main__":
    main()
