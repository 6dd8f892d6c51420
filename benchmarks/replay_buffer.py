"""Replay buffer throughput at 10^6 entries: add, sample(256)+update, and raw draws, against a naive buffer that
renormalises the whole distribution on every call (numpy ``choice`` with ``p=``, plus an argsort for rank) and
RLlib's prioritized buffer when ``ray.rllib`` imports. Prints a table, then one JSON line with the speed-ups and
whether each target (sample+update >= 50x naive, >= 10^6 draws/s) is met.

The buffer's and the naive buffer's steps are timed in alternating rounds (``--steps-per-round`` buffer steps, then
one naive step), so a change in machine load between them does not skew the ratio; the speed-up is total over total,
and the median of the rounds' ratios is shown beside it. A step times the two buffer calls only: ``sample(256)``
(ids and records) and ``update`` of the distinct drawn ids with fresh per-test results; the caller's de-duplication
of the ids and the building of the per-test tuples (the tester's work) happen between the timed calls.

Every numba kernel of ``btp_ray.replay.kernels`` is warmed before anything is timed: a small buffer per strategy goes
through add (with eviction), sample, update and sample again, and the run checks that no kernel compiled a new
signature inside the timed rounds (``compiled_during_timing``, which must be empty). The cold-start cost is reported
apart: the same warm-up in a fresh interpreter with an empty numba cache (compile) and again with that cache filled
(load from the cache).

Usage: ``python benchmarks/replay_buffer.py [--entries 1000000] [--rounds 20] [--steps-per-round 10]``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
import psutil
from numba.extending import is_jitted

from btp_ray.replay import Experience, ReplayBuffer, kernels

BATCH = 256
TESTS_PER_PROGRAM = 4
SPEEDUP_TARGET = 50.0
DRAWS_TARGET = 1_000_000.0
STRATEGIES = ("power", "rank")


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


def best_rate(count: int, call: Callable[[], object], repeats: int = 3) -> float:
    """``count`` divided by the fastest of ``repeats`` timed calls."""
    fastest = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        fastest = min(fastest, time.perf_counter() - start)
    return rate(count, fastest)


def compiled_signatures() -> dict[str, int]:
    """How many signatures each numba kernel of the buffer has compiled (or loaded from the cache) so far."""
    return {name: len(value.signatures) for name, value in vars(kernels).items() if is_jitted(value)}


def warm_kernels() -> float:
    """Run every buffer path that reaches a kernel, on a small buffer per strategy; returns the seconds it took.

    Small changes take the incremental paths (the rank order's merge, the eviction tree's set), a snapshot restored
    takes the rebuilds, a full buffer evicts, and draws go with and without replacement."""
    start = time.perf_counter()
    rng = np.random.default_rng(2)
    capacity = 4096
    for strategy in STRATEGIES:
        buffer = ReplayBuffer(capacity=capacity, strategy=strategy, beta=1.0, seed=0)
        buffer.add(make_records(capacity, seed=1))
        for step in range(3):
            ids, _ = buffer.sample(64)
            unique = np.unique(ids)
            per_test = [tuple(row) for row in (rng.random((len(unique), TESTS_PER_PROGRAM)) < 0.5).tolist()]
            buffer.update(unique, per_test=per_test)
            buffer.update(unique, mean_token_logprobs=(-rng.exponential(0.5, len(unique))).tolist())
            fresh = make_records(64, seed=100 + step)
            buffer.add([dataclasses.replace(r, problem_id=f"W/{step}") for r in fresh])  # a full buffer evicts
            buffer.sample(32, replace=False)
            buffer.sample_ids(1000)
            buffer.probabilities()
        restored = ReplayBuffer.restore(buffer.snapshot(), buffer.config)
        restored.sample(64)
    return time.perf_counter() - start


def cold_start_seconds() -> dict[str, float]:
    """The warm-up in a fresh interpreter: with an empty numba cache (every kernel compiles), then with that cache."""
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="btp-numba-cache-") as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        for label in ("compile", "cached"):
            out = subprocess.run(
                [sys.executable, __file__, "--warm-only"], env=env, capture_output=True, text=True, check=True
            )
            seconds[f"cold_start_{label}_s"] = json.loads(out.stdout.strip().splitlines()[-1])["warm_s"]
    return seconds


def fill(strategy: str, records: list[Experience], results: dict[str, float]) -> ReplayBuffer:
    process = psutil.Process(os.getpid())
    rss_before = process.memory_info().rss
    buffer = ReplayBuffer(capacity=len(records), strategy=strategy, beta=1.0, seed=0)
    start = time.perf_counter()
    for begin in range(0, len(records), 10_000):
        buffer.add(records[begin : begin + 10_000])
    results[f"{strategy}_add_per_s"] = rate(len(records), time.perf_counter() - start)
    results[f"{strategy}_index_bytes_per_entry"] = (process.memory_info().rss - rss_before) / len(records)
    return buffer


def bench_strategy(
    strategy: str, records: list[Experience], rounds: int, steps_per_round: int, results: dict[str, float]
) -> ReplayBuffer:
    buffer = fill(strategy, records, results)
    ids, probabilities = buffer.probabilities()
    naive = NaiveBuffer(probabilities, strategy, 1.0, seed=0)  # p^1 normalised: the same distribution
    rng = np.random.default_rng(1)

    def per_test_results(count: int) -> list[tuple[bool, ...]]:
        return [tuple(row) for row in (rng.random((count, TESTS_PER_PROGRAM)) < 0.5).tolist()]

    # Untimed: the kernels are warm already (warm_kernels); rank's first read on this buffer sorts its entries once.
    for _ in range(2):
        ids, _ = buffer.sample(BATCH)
        unique = np.unique(ids)
        buffer.update(unique, per_test=per_test_results(len(unique)))

    buffer_seconds: list[float] = []  # per round: the buffer's mean step
    naive_seconds: list[float] = []  # per round: the naive step
    for _ in range(rounds):
        elapsed = 0.0
        for _ in range(steps_per_round):
            start = time.perf_counter()
            ids, _ = buffer.sample(BATCH)
            elapsed += time.perf_counter() - start
            unique = np.unique(ids)
            per_test = per_test_results(len(unique))
            start = time.perf_counter()
            buffer.update(unique, per_test=per_test)
            elapsed += time.perf_counter() - start
        buffer_seconds.append(elapsed / steps_per_round)
        start = time.perf_counter()
        indices = naive.sample(BATCH)
        naive.update(indices, rng.random(len(indices)))
        naive_seconds.append(time.perf_counter() - start)

    results[f"{strategy}_sample_update_per_s"] = rate(rounds, sum(buffer_seconds))
    results[f"{strategy}_naive_sample_update_per_s"] = rate(rounds, sum(naive_seconds))
    results[f"{strategy}_speedup_vs_naive"] = sum(naive_seconds) / sum(buffer_seconds)
    results[f"{strategy}_speedup_median_round"] = float(np.median(np.divide(naive_seconds, buffer_seconds)))
    results[f"{strategy}_draws_per_s"] = best_rate(1_000_000, lambda: buffer.sample_ids(1_000_000))
    results[f"{strategy}_naive_draws_per_s"] = best_rate(1_000_000, lambda: naive.sample(1_000_000), repeats=1)
    results[f"{strategy}_speedup_target_met"] = results[f"{strategy}_speedup_vs_naive"] >= SPEEDUP_TARGET
    results[f"{strategy}_draws_target_met"] = results[f"{strategy}_draws_per_s"] >= DRAWS_TARGET
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

    start = time.perf_counter()
    for _ in range(steps):
        step()
    results["rllib_sample_update_per_s"] = rate(steps, time.perf_counter() - start)
    return "ran ray.rllib SumSegmentTree (the core of its prioritized buffer)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=20, help="alternations of buffer steps and one naive step")
    parser.add_argument("--steps-per-round", type=int, default=10)
    parser.add_argument("--warm-only", action="store_true", help="only warm the kernels; print the seconds (JSON)")
    args = parser.parse_args()
    if args.warm_only:
        print(json.dumps({"warm_s": warm_kernels()}))
        return

    cold = cold_start_seconds()
    warm_s = warm_kernels()
    before = compiled_signatures()
    process = psutil.Process(os.getpid())
    rss_start = process.memory_info().rss
    records = make_records(args.entries, seed=0)
    record_bytes = (process.memory_info().rss - rss_start) / args.entries
    results: dict[str, float] = {"entries": args.entries, "record_bytes_per_entry": record_bytes}
    for strategy in STRATEGIES:
        buffer = bench_strategy(strategy, records, args.rounds, args.steps_per_round, results)
        if strategy == "power":
            rllib_note = bench_rllib(buffer.probabilities()[1] * args.entries, args.rounds, results)
        del buffer
    after = compiled_signatures()
    compiled_during_timing = sorted(name for name, count in after.items() if count != before[name])
    # Kernels called only from other kernels are compiled into their callers and show no signature of their own when
    # those load from the cache; the ones the buffer calls must all be warm.
    never_warmed = sorted(name for name, count in before.items() if count == 0 and not name.startswith("_"))

    print(f"replay buffer at {args.entries:,} entries (sample batch {BATCH}, update = re-test of the drawn entries)")
    print(f"{'strategy':<8} {'add/s':>10} {'smp+upd/s':>10} {'naive/s':>9} {'speedup':>8} {'median':>7} "
          f"{'draws/s':>12} {'naive draws/s':>14} {'index B/entry':>14}")  # fmt: skip
    for strategy in STRATEGIES:
        print(
            f"{strategy:<8} {results[f'{strategy}_add_per_s']:>10,.0f} "
            f"{results[f'{strategy}_sample_update_per_s']:>10,.1f} "
            f"{results[f'{strategy}_naive_sample_update_per_s']:>9,.2f} "
            f"{results[f'{strategy}_speedup_vs_naive']:>7,.0f}x {results[f'{strategy}_speedup_median_round']:>6,.0f}x "
            f"{results[f'{strategy}_draws_per_s']:>12,.0f} {results[f'{strategy}_naive_draws_per_s']:>14,.0f} "
            f"{results[f'{strategy}_index_bytes_per_entry']:>14,.0f}"
        )
    print(f"records themselves: {record_bytes:,.0f} B/entry (short programs)")
    print(
        f"cold start (the warm-up in a fresh interpreter): {cold['cold_start_compile_s']:.1f} s with an empty numba "
        f"cache (compiling {len(before)} kernels), {cold['cold_start_cached_s']:.2f} s from the cache; "
        f"warm-up in this process {warm_s:.2f} s; compiled inside the timed rounds: {compiled_during_timing or 'none'}"
        + (f"; never reached by the warm-up: {never_warmed}" if never_warmed else "")
    )
    if "rllib_sample_update_per_s" in results:
        add_rate, step_rate = results["rllib_add_per_s"], results["rllib_sample_update_per_s"]
        print(f"rllib: add {add_rate:,.0f}/s, sample+update {step_rate:,.1f}/s")
    print(f"rllib: {rllib_note}")
    targets = {key: value for key, value in results.items() if isinstance(value, bool)}
    print(
        f"targets (sample+update >= {SPEEDUP_TARGET:.0f}x naive, draws >= {DRAWS_TARGET:,.0f}/s): "
        + ", ".join(f"{key}={value}" for key, value in targets.items())
    )
    results.update(cold, warm_up_s=warm_s)
    summary = {key: value if isinstance(value, bool) else round(value, 3) for key, value in results.items()}
    load = dict(zip(("load_1m", "load_5m", "load_15m"), os.getloadavg(), strict=True))
    print(json.dumps({**summary, "all_targets_met": all(targets.values()), "compiled_during_timing":
                      compiled_during_timing, "never_warmed": never_warmed, "rllib": rllib_note, **load}))  # fmt: skip


if __name__ == "__main__":
    main()
