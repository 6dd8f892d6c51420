"""Replay buffer throughput at 10^6 entries: add, sample(256)+update, and raw draws, against a naive buffer that
renormalises the whole distribution on every call (numpy ``choice`` with ``p=``, plus an argsort for rank) and
RLlib's prioritized buffer when ``ray.rllib`` imports. Prints a table, then one JSON line.

Usage: ``python benchmarks/replay_buffer.py [--entries 1000000] [--steps 200]``
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable

import numpy as np
import psutil

from btp_ray.replay import Experience, ReplayBuffer

BATCH = 256


class NaiveBuffer:
    """The baseline: priorities in a numpy array, the normalised distribution recomputed on every sample."""

    def __init__(self, priorities: np.ndarray, strategy: str, beta: float, seed: int) -> None:
        self.priorities = priorities.copy()
        self.strategy = strategy
        self.beta = beta
        self.rng = np.random.default_rng(seed)

    def sample(self, n: int) -> np.ndarray:
        if self.strategy == "rank":
            ranks = np.empty(len(self.priorities))
            ranks[np.argsort(-self.priorities, kind="stable")] = np.arange(1, len(self.priorities) + 1)
            weights = ranks**-self.beta
        else:
            weights = self.priorities**self.beta
        return self.rng.choice(len(weights), n, p=weights / weights.sum())

    def update(self, indices: np.ndarray, priorities: np.ndarray) -> None:
        self.priorities[indices] = priorities


def make_records(count: int, seed: int) -> list[Experience]:
    rng = np.random.default_rng(seed)
    pass_rates = (rng.integers(0, 11, count) / 10).tolist()
    logprobs = (-rng.exponential(0.5, count)).tolist()
    return [
        Experience(problem_id=f"P/{i % 500}", code=f"def f(x):\n    return x + {i}\n", pass_rate=pass_rates[i],
                   mean_token_logprob=logprobs[i], token_count=16, created_at=0.0)
        for i in range(count)
    ]  # fmt: skip


def rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def time_steps(step: Callable[[], None], steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return rate(steps, time.perf_counter() - start)


def bench_strategy(
    strategy: str, records: list[Experience], steps: int, rng: np.random.Generator, results: dict[str, float]
) -> ReplayBuffer:
    process = psutil.Process(os.getpid())
    rss_before = process.memory_info().rss
    buffer = ReplayBuffer(capacity=len(records), strategy=strategy, beta=1.0, seed=0)
    start = time.perf_counter()
    for begin in range(0, len(records), 10_000):
        buffer.add(records[begin : begin + 10_000])
    results[f"{strategy}_add_per_s"] = rate(len(records), time.perf_counter() - start)
    results[f"{strategy}_index_bytes_per_entry"] = (process.memory_info().rss - rss_before) / len(records)

    per_test = [tuple(bool(value) for value in row) for row in rng.random((steps * BATCH, 4)) < 0.5]

    counter = iter(range(steps))

    def step() -> None:
        index = next(counter)
        ids, _ = buffer.sample(BATCH)
        unique = np.unique(ids)
        buffer.update(unique, per_test=per_test[index * BATCH : index * BATCH + len(unique)])

    buffer.sample(BATCH)  # rank: first read sorts once
    results[f"{strategy}_sample_update_per_s"] = time_steps(step, steps)
    start = time.perf_counter()
    buffer.sample_ids(1_000_000)
    results[f"{strategy}_draws_per_s"] = rate(1_000_000, time.perf_counter() - start)

    ids, _ = buffer.probabilities()
    naive = NaiveBuffer(np.array([r.p2value for r in buffer.get(ids)]), strategy, 1.0, seed=0)
    naive_steps = max(3, steps // 20)

    def naive_step() -> None:
        indices = naive.sample(BATCH)
        naive.update(indices, rng.random(len(indices)))

    results[f"{strategy}_naive_sample_update_per_s"] = time_steps(naive_step, naive_steps)
    start = time.perf_counter()
    naive.sample(1_000_000)
    results[f"{strategy}_naive_draws_per_s"] = rate(1_000_000, time.perf_counter() - start)
    results[f"{strategy}_speedup_vs_naive"] = (
        results[f"{strategy}_sample_update_per_s"] / results[f"{strategy}_naive_sample_update_per_s"]
    )
    return buffer


def bench_rllib(priorities: np.ndarray, steps: int, results: dict[str, float]) -> str:
    try:
        from ray.rllib.execution.segment_tree import SumSegmentTree
    except ImportError as error:
        return f"skipped: ray.rllib does not import ({error.__class__.__name__}: {error})"
    capacity = 1 << (len(priorities) - 1).bit_length()
    tree = SumSegmentTree(capacity)
    start = time.perf_counter()
    for index, value in enumerate(priorities.tolist()):
        tree[index] = value
    results["rllib_add_per_s"] = rate(len(priorities), time.perf_counter() - start)
    rng = np.random.default_rng(0)

    def step() -> None:
        total = tree.sum()
        indices = [tree.find_prefixsum_idx(u * total) for u in rng.random(BATCH)]
        for index, value in zip(indices, rng.random(BATCH).tolist(), strict=True):
            tree[index] = value

    results["rllib_sample_update_per_s"] = time_steps(step, steps)
    return "ran ray.rllib SumSegmentTree (the core of its prioritized buffer)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()

    process = psutil.Process(os.getpid())
    rss_start = process.memory_info().rss
    records = make_records(args.entries, seed=0)
    record_bytes = (process.memory_info().rss - rss_start) / args.entries
    results: dict[str, float] = {"entries": args.entries, "record_bytes_per_entry": record_bytes}
    rng = np.random.default_rng(1)
    power = bench_strategy("power", records, args.steps, rng, results)
    rllib_note = bench_rllib(power.probabilities()[1] * args.entries, args.steps, results)
    del power
    bench_strategy("rank", records, args.steps, rng, results)

    print(f"replay buffer at {args.entries:,} entries (sample batch {BATCH}, update = re-test of the drawn entries)")
    print(f"{'strategy':<8} {'add/s':>10} {'smp+upd/s':>10} {'naive/s':>9} {'speedup':>8} {'draws/s':>12} "
          f"{'naive draws/s':>14} {'index B/entry':>14}")  # fmt: skip
    for strategy in ("power", "rank"):
        print(
            f"{strategy:<8} {results[f'{strategy}_add_per_s']:>10,.0f} "
            f"{results[f'{strategy}_sample_update_per_s']:>10,.1f} "
            f"{results[f'{strategy}_naive_sample_update_per_s']:>9,.2f} "
            f"{results[f'{strategy}_speedup_vs_naive']:>7,.0f}x {results[f'{strategy}_draws_per_s']:>12,.0f} "
            f"{results[f'{strategy}_naive_draws_per_s']:>14,.0f} {results[f'{strategy}_index_bytes_per_entry']:>14,.0f}"
        )
    print(f"records themselves: {record_bytes:,.0f} B/entry (short programs)")
    if "rllib_sample_update_per_s" in results:
        add_rate, step_rate = results["rllib_add_per_s"], results["rllib_sample_update_per_s"]
        print(f"rllib: add {add_rate:,.0f}/s, sample+update {step_rate:,.1f}/s")
    print(f"rllib: {rllib_note}")
    print(json.dumps({**{key: round(value, 3) for key, value in results.items()}, "rllib": rllib_note}))


if __name__ == "__main__":
    main()
