"""Metrics: the unbiased pass@k estimator against the exact combinatorial formula, RSR, exact match, summaries."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from btp_ray.metrics import (
    CostRecord,
    ProblemOutcome,
    exact_match,
    mean_pass_at_k,
    p2value_stats,
    pass_at_k,
    relative_success_rate,
    summarize,
)


def exact_pass_at_k(n: int, c: int, k: int) -> float:
    """The Codex paper's definition, computed with exact integers."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (1, 0, 1, 0.0),
        (1, 1, 1, 1.0),
        (10, 0, 1, 0.0),  # c = 0
        (10, 0, 10, 0.0),
        (10, 10, 1, 1.0),  # c = n
        (10, 10, 10, 1.0),
        (10, 1, 1, 0.1),
        (10, 1, 10, 1.0),  # n - c < k
        (10, 5, 6, 1.0),  # n - c = 5 < 6
        (10, 5, 5, 1.0 - 1 / 252),  # C(5,5)/C(10,5)
        (10, 3, 5, 1.0 - math.comb(7, 5) / math.comb(10, 5)),
        (200, 13, 1, 13 / 200),
        (200, 13, 10, 1.0 - math.comb(187, 10) / math.comb(200, 10)),
        (200, 13, 100, 1.0 - math.comb(187, 100) / math.comb(200, 100)),
    ],
)
def test_pass_at_k_table(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


@given(st.integers(1, 300).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_matches_exact_formula(args: tuple[int, int, int]) -> None:
    n, c, k = args
    value = pass_at_k(n, c, k)
    assert 0.0 <= value <= 1.0
    assert value == pytest.approx(exact_pass_at_k(n, c, k), abs=1e-9)


@given(st.integers(2, 100).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1), st.integers(1, n))))
def test_pass_at_k_is_monotone_in_c(args: tuple[int, int, int]) -> None:
    n, c, k = args
    assert pass_at_k(n, c + 1, k) >= pass_at_k(n, c, k) - 1e-12


def test_pass_at_1_is_fraction_correct() -> None:
    assert pass_at_k(7, 3, 1) == pytest.approx(3 / 7)


@pytest.mark.parametrize(("n", "c", "k"), [(0, 0, 1), (5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)])
def test_pass_at_k_rejects_invalid(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError, match="pass_at_k"):
        pass_at_k(n, c, k)


def test_mean_pass_at_k_averages_problems() -> None:
    assert mean_pass_at_k([(10, 0), (10, 10), (10, 1)], 1) == pytest.approx((0 + 1 + 0.1) / 3)
    with pytest.raises(ValueError):
        mean_pass_at_k([], 1)


def test_rsr() -> None:
    assert relative_success_rate(60.0, 50.0) == pytest.approx(20.0)
    assert relative_success_rate(40.0, 50.0) == pytest.approx(-20.0)
    assert relative_success_rate(100.0, 0.0) == pytest.approx(100.0)
    assert math.isnan(relative_success_rate(100.0, 100.0))
    with pytest.raises(ValueError, match="percentage"):
        relative_success_rate(0.6, 150.0)


def test_exact_match_ignores_comments_and_layout() -> None:
    a = "def f(x):\n    # add one\n    return x+1\n"
    b = "def f(x):  return (x + 1)"
    assert exact_match(a, b)
    assert not exact_match(a, "def f(x):\n    return x + 2\n")
    # code that does not parse still compares by tokens, not by raw text
    assert exact_match("x = = 1  # note\n", "x = =   1")
    assert not exact_match("x = = 1", "x = = 2")


def test_summarize_never_counts_partial_passes_as_solved() -> None:
    outcomes = [
        ProblemOutcome("a", pass_rates=(1.0, 0.5, 0.0), selected_pass_rate=1.0, exact_match=True),
        ProblemOutcome("b", pass_rates=(0.9, 0.9, 0.9), selected_pass_rate=0.9, exact_match=False),  # never solved
        ProblemOutcome("c", pass_rates=(0.0, 1.0, 0.0), selected_pass_rate=0.0, exact_match=False),
    ]
    summary = summarize(outcomes, ks=(1, 2, 5))
    assert summary.num_problems == 3
    assert summary.samples_per_problem == 3
    assert set(summary.pass_at_k) == {1, 2}  # k=5 > n is not reported
    assert summary.pass_at_k[1] == pytest.approx((1 / 3 + 0 + 1 / 3) / 3)
    assert summary.greedy_pass_at_1 == pytest.approx(1 / 3)
    assert summary.solved == 1
    assert summary.any_solved == 2  # b passed 90 % of its tests everywhere, yet is not solved
    assert summary.mean_pass_rate == pytest.approx((1.5 + 2.7 + 1.0) / 9)
    assert summary.exact_match == pytest.approx(1 / 3)
    assert summary.to_dict()["pass_at_k"]["pass@2"] == pytest.approx(summary.pass_at_k[2])


def test_problem_outcome_validates() -> None:
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        ProblemOutcome("x", pass_rates=(1.2,))
    with pytest.raises(ValueError, match="all problems or none"):
        summarize([ProblemOutcome("a", (1.0,), 1.0), ProblemOutcome("b", (0.0,))])


def test_p2value_stats() -> None:
    stats = p2value_stats([0.1, 0.2, 0.9, 0.95])
    assert stats["count"] == 4
    assert stats["mean"] == pytest.approx(0.5375)
    assert sum(stats["histogram"]["counts"]) == 4
    assert p2value_stats([]) == {"count": 0}


def test_cost_record_accumulates_and_round_trips() -> None:
    cost = CostRecord()
    cost.add_phase("sample", 2.0)
    cost.add_phase("sample", 1.0)
    cost.add_tokens(10, 20, usd=0.5)
    other = CostRecord(phase_seconds={"train": 4.0}, tokens_out=5, cpu_seconds=1.5)
    merged = cost.merge(other)
    assert merged.phase_seconds == {"sample": 3.0, "train": 4.0}
    assert merged.wall_seconds == pytest.approx(7.0)
    assert (merged.tokens_in, merged.tokens_out, merged.api_cost_usd) == (10, 25, 0.5)
    assert CostRecord.from_dict(merged.to_dict()) == merged
    with pytest.raises(ValueError, match="seconds"):
        cost.add_phase("x", -1.0)
