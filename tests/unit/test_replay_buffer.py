"""Unit tests of the replay buffer (no Ray): exact sampling distributions, de-duplication, eviction, updates,
validation and reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from btp_ray.replay import Experience, ReplayBuffer, ReplayConfig

DRAWS = 1_000_000
SIZE = 1_000


def make_experiences(count: int, seed: int = 0, problems: int = 50) -> list[Experience]:
    rng = np.random.default_rng(seed)
    pass_rates = rng.integers(0, 9, count) / 8  # coarse: many ties, as real pass rates have
    logprobs = -rng.exponential(0.7, count)
    return [
        Experience(problem_id=f"P/{i % problems}", code=f"def f():\n    return {i}\n", per_test=(True,),
                   pass_rate=float(pass_rates[i]), mean_token_logprob=float(logprobs[i]), token_count=20)
        for i in range(count)
    ]  # fmt: skip


def expected_distribution(buffer: ReplayBuffer, ids: np.ndarray) -> np.ndarray:
    """The textbook distribution computed from the stored records, independently of the buffer's trees."""
    config = buffer.config
    records = buffer.get(ids)
    p2 = np.array([record.p2value for record in records])
    if config.strategy.value == "power":
        weights = p2**config.beta
    elif config.strategy.value == "rank":
        ranks = np.empty(len(ids))
        ranks[np.lexsort((np.arange(len(ids)), -p2))] = np.arange(1, len(ids) + 1)  # ties: older first
        weights = (1.0 / ranks) ** config.beta
    else:
        weights = np.ones(len(ids))
    return weights / weights.sum()


def chi_square_pvalue(draws: np.ndarray, ids: np.ndarray, probs: np.ndarray) -> float:
    """Chi-square goodness of fit; bins with small expectation are pooled so every expected count is >= 5."""
    position = {int(entry): index for index, entry in enumerate(ids)}
    unique, counts = np.unique(draws, return_counts=True)
    observed = np.zeros(len(ids))
    observed[[position[int(entry)] for entry in unique]] = counts
    expected = probs * len(draws)
    order = np.argsort(-expected)
    pooled_obs, pooled_exp, acc_obs, acc_exp = [], [], 0.0, 0.0
    for index in order:
        acc_obs += observed[index]
        acc_exp += expected[index]
        if acc_exp >= 5:
            pooled_obs.append(acc_obs)
            pooled_exp.append(acc_exp)
            acc_obs = acc_exp = 0.0
    pooled_obs[-1] += acc_obs
    pooled_exp[-1] += acc_exp
    return float(stats.chisquare(pooled_obs, pooled_exp).pvalue)


@pytest.mark.parametrize("strategy", ["power", "rank"])
@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0])
def test_draws_match_the_exact_distribution(strategy: str, beta: float) -> None:
    buffer = ReplayBuffer(capacity=SIZE, strategy=strategy, beta=beta, seed=1234)
    records = make_experiences(SIZE)
    buffer.add(records[:400])
    buffer.add(records[400:])
    ids, probs = buffer.probabilities()
    expected = expected_distribution(buffer, ids)
    np.testing.assert_allclose(probs, expected, rtol=1e-9)
    draws = buffer.sample_ids(DRAWS)
    assert chi_square_pvalue(draws, ids, expected) > 0.001


def test_uniform_is_uniform() -> None:
    buffer = ReplayBuffer(capacity=SIZE, strategy="uniform", seed=7)
    buffer.add(make_experiences(SIZE))
    ids, probs = buffer.probabilities()
    np.testing.assert_allclose(probs, 1.0 / SIZE)
    assert chi_square_pvalue(buffer.sample_ids(DRAWS), ids, probs) > 0.001


def test_chi_square_detects_a_wrong_distribution() -> None:
    """Guards the test above: power draws do not pass as rank draws."""
    buffer = ReplayBuffer(capacity=SIZE, strategy="power", beta=1.0, seed=3)
    buffer.add(make_experiences(SIZE))
    ids, _ = buffer.probabilities()
    rank_buffer = ReplayBuffer(capacity=SIZE, strategy="rank", beta=1.0, seed=3)
    rank_buffer.add(make_experiences(SIZE))
    assert chi_square_pvalue(buffer.sample_ids(200_000), ids, expected_distribution(rank_buffer, ids)) < 1e-6


def test_rank_distribution_stays_exact_through_updates_and_evictions() -> None:
    buffer = ReplayBuffer(capacity=300, strategy="rank", beta=1.0, seed=5)
    records = make_experiences(600, seed=9)
    buffer.add(records[:300])
    rng = np.random.default_rng(0)
    for step in range(20):
        ids = buffer.sample_ids(25, replace=False)
        buffer.update(ids, per_test=[tuple(rng.random(4) < 0.5) for _ in ids])
        buffer.add(records[300 + 15 * step : 315 + 15 * step])
        live_ids, probs = buffer.probabilities()
        np.testing.assert_allclose(probs, expected_distribution(buffer, live_ids), rtol=1e-9)
    assert buffer.stats().evicted > 0


@pytest.mark.parametrize("strategy", ["power", "rank", "uniform"])
def test_sampling_without_replacement_is_distinct_and_successive(strategy: str) -> None:
    buffer = ReplayBuffer(capacity=10, strategy=strategy, beta=1.0, seed=11)
    records = [Experience(problem_id="p", code=f"v{i}", per_test=(True,), pass_rate=(i + 1) / 10) for i in range(10)]
    buffer.add(records)
    ids = buffer.sample_ids(10, replace=False)
    assert sorted(ids.tolist()) == sorted(buffer.ids().tolist())
    # first draw of a successive sample follows the with-replacement distribution
    all_ids, probs = buffer.probabilities()
    firsts = np.array([buffer.sample_ids(3, replace=False)[0] for _ in range(8_000)])
    assert chi_square_pvalue(firsts, all_ids, probs) > 0.001
    # the second draw excludes the first: P(second = j | first = i) = p_j / (1 - p_i)
    pairs = np.array([buffer.sample_ids(2, replace=False) for _ in range(8_000)])
    top = all_ids[np.argmax(probs)]
    seconds = pairs[pairs[:, 0] == top, 1]
    others = all_ids != top
    conditional = probs[others] / probs[others].sum()
    assert top not in seconds
    assert chi_square_pvalue(seconds, all_ids[others], conditional) > 0.001


def test_same_seed_same_inserts_same_draws() -> None:
    def draws(seed: int) -> list[int]:
        buffer = ReplayBuffer(capacity=500, strategy="rank", beta=0.7, seed=seed)
        records = make_experiences(700, seed=2)
        buffer.add(records[:300])
        first = buffer.sample_ids(50).tolist()
        buffer.add(records[300:])
        return first + buffer.sample_ids(100, replace=False).tolist()

    assert draws(42) == draws(42)
    assert draws(42) != draws(43)


def test_duplicates_are_merged_keeping_the_best() -> None:
    buffer = ReplayBuffer(capacity=10, alpha=0.0)
    worse = Experience(problem_id="p", code="def f():\n    return 1\n", per_test=(True, False))
    better = Experience(problem_id="p", code="def f():\r\n    return 1   \r\n\r\n", per_test=(True, True))
    other_problem = Experience(problem_id="q", code="def f():\n    return 1\n", per_test=(True, False))
    first = buffer.add([worse])
    result = buffer.add([better, other_problem, worse])
    assert result.added == 1 and result.duplicates == 2
    assert result.ids[0] == first.ids[0] == result.ids[2]
    assert len(buffer) == 2
    kept = buffer.get([first.ids[0]])[0]
    assert kept.pass_rate == 1.0 and kept.code == better.code
    assert buffer.stats().duplicates == 2 and buffer.stats().per_problem == {"p": 1, "q": 1}


def test_deduplicate_off_keeps_copies() -> None:
    buffer = ReplayBuffer(capacity=10, deduplicate=False)
    record = Experience(problem_id="p", code="x = 1", per_test=(True,))
    assert buffer.add([record, record]).added == 2 and len(buffer) == 2


def test_lowest_priority_eviction_keeps_the_best_and_rejects_worse() -> None:
    buffer = ReplayBuffer(capacity=3, alpha=0.0, eviction="lowest_priority")
    low, mid, high, top = (Experience(problem_id="p", code=f"c{i}", per_test=(True,), pass_rate=r)
                           for i, r in enumerate((0.1, 0.5, 0.8, 0.9)))  # fmt: skip
    added = buffer.add([mid, low, high])
    result = buffer.add([top, Experience(problem_id="p", code="c-low", per_test=(False,))])
    assert (result.added, result.evicted, result.rejected) == (1, 1, 1)
    assert result.ids[1] == -1
    assert sorted(record.pass_rate for record in buffer.get(buffer.ids())) == [0.5, 0.8, 0.9]
    # the evicted entry's id is stale: update skips it, get refuses it
    assert buffer.update([added.ids[1]], per_test=[(True,)]).missing == (added.ids[1],)
    with pytest.raises(ValueError, match="not in the buffer"):
        buffer.get([added.ids[1]])


def test_fifo_eviction_drops_the_oldest() -> None:
    buffer = ReplayBuffer(capacity=3, eviction="fifo")
    records = [Experience(problem_id="p", code=f"c{i}", per_test=(True,), pass_rate=0.9 - 0.1 * i) for i in range(5)]
    buffer.add(records[:3])
    result = buffer.add(records[3:])
    assert result.evicted == 2
    assert sorted(record.code for record in buffer.get(buffer.ids())) == ["c2", "c3", "c4"]


def test_update_rescores_and_moves_the_distribution() -> None:
    buffer = ReplayBuffer(capacity=4, alpha=0.5, beta=1.0)
    records = [Experience(problem_id="p", code=f"c{i}", per_test=(False, False), mean_token_logprob=-1.0,
                          token_count=5) for i in range(4)]  # fmt: skip
    ids = np.array(buffer.add(records).ids)
    result = buffer.update(ids[:1], per_test=[(True, True)], now=123.0)
    assert result.updated == 1 and result.missing == ()
    updated = buffer.get(ids[:1])[0]
    assert updated.pass_rate == 1.0 and updated.updated_at == 123.0
    assert updated.p2value == pytest.approx(0.5 * np.exp(-1.0) + 0.5)
    _, probs = buffer.probabilities()
    assert probs[0] == pytest.approx(updated.p2value / (updated.p2value + 3 * 0.5 * np.exp(-1.0)))
    buffer.update(ids[1:2], mean_token_logprobs=[-0.1])
    assert buffer.get(ids[1:2])[0].possibility == pytest.approx(np.exp(-0.1))


def test_ablation_arms_prioritise_one_component() -> None:
    records = [Experience(problem_id="p", code="a", per_test=(True,), mean_token_logprob=-3.0, token_count=1),
               Experience(problem_id="p", code="b", per_test=(False,), mean_token_logprob=-0.01, token_count=1),
               Experience(problem_id="p", code="c", per_test=(True, False))]  # fmt: skip
    by_pass = ReplayBuffer(capacity=3, strategy="pass_rate")
    by_pass.add(records)
    np.testing.assert_allclose(by_pass.probabilities()[1], np.array([1.0, 0.0, 0.5]) / 1.5)
    by_possibility = ReplayBuffer(capacity=3, strategy="possibility")
    by_possibility.add(records)
    weights = np.array([np.exp(-3.0), np.exp(-0.01), 0.5])  # no possibility: falls back to the pass rate
    np.testing.assert_allclose(by_possibility.probabilities()[1], weights / weights.sum())


def test_product_possibility_mode_is_applied_on_add() -> None:
    buffer = ReplayBuffer(capacity=2, possibility="product", alpha=1.0)
    record = Experience(problem_id="p", code="x", per_test=(True,), mean_token_logprob=-0.1, token_count=30)
    buffer.add([record])
    stored = buffer.get(buffer.ids())[0]
    assert stored.possibility == pytest.approx(np.exp(-3.0)) and stored.p2value == pytest.approx(np.exp(-3.0))


def test_zero_priorities_need_epsilon() -> None:
    records = [Experience(problem_id="p", code=f"c{i}", per_test=(False,)) for i in range(3)]
    buffer = ReplayBuffer(capacity=3)
    buffer.add(records)
    with pytest.raises(ValueError, match="epsilon"):
        buffer.sample(1)
    floored = ReplayBuffer(capacity=3, epsilon=0.01)
    floored.add(records)
    assert sorted(floored.sample_ids(3, replace=False).tolist()) == sorted(floored.ids().tolist())
    partly = ReplayBuffer(capacity=3)
    partly.add([*records[:2], Experience(problem_id="p", code="ok", per_test=(True,))])
    with pytest.raises(ValueError, match="non-zero priority"):
        partly.sample_ids(2, replace=False)
    np.testing.assert_allclose(partly.probabilities()[1], [0.0, 0.0, 1.0])  # restored after the failed draw


def fingerprint(buffer: ReplayBuffer) -> tuple:
    state = buffer.snapshot()
    return (state.ids.tolist(), state.experiences, state.duplicates.tolist(), state.counters, str(state.rng_state))


@pytest.mark.parametrize(
    ("call", "match"),
    [(lambda b: b.add([Experience(problem_id="p", code="z", per_test=(True,)), "not an experience"]), "Experience"),
     (lambda b: b.sample(5, replace=False), "without replacement"),
     (lambda b: b.sample(-1), "n must be"),
     (lambda b: b.update(b.ids()[:2], per_test=[(True,), (2,)]), "bools"),
     (lambda b: b.update(b.ids()[:2], per_test=[(True,), ()]), "non-empty"),
     (lambda b: b.update(b.ids()[:2], mean_token_logprobs=[-0.1, float("nan")]), "mean_token_logprob"),
     (lambda b: b.update(b.ids()[:2], per_test=[(True,)]), "entries for 2 ids"),
     (lambda b: b.update([b.ids()[0], b.ids()[0]], per_test=[(True,), (True,)]), "distinct"),
     (lambda b: b.update(b.ids()[:1]), "per_test and/or")],
)  # fmt: skip
def test_bad_calls_raise_and_leave_the_buffer_unchanged(call, match: str) -> None:
    buffer = ReplayBuffer(capacity=4, possibility="product")
    buffer.add(make_experiences(3))
    before = fingerprint(buffer)
    with pytest.raises(ValueError, match=match):
        call(buffer)
    assert fingerprint(buffer) == before


def test_add_with_a_product_record_lacking_tokens_changes_nothing() -> None:
    buffer = ReplayBuffer(capacity=4, possibility="product")
    buffer.add(make_experiences(2))
    before = fingerprint(buffer)
    bad = Experience(problem_id="p", code="y", per_test=(True,), mean_token_logprob=-0.2, token_count=0)
    with pytest.raises(ValueError, match="token_count"):
        buffer.add([make_experiences(3, seed=5)[2], bad])
    assert fingerprint(buffer) == before


def test_sampling_an_empty_buffer_raises() -> None:
    with pytest.raises(ValueError, match="empty"):
        ReplayBuffer(capacity=3).sample(1)


@pytest.mark.parametrize(
    ("fields", "name"),
    [({"alpha": 1.5}, "alpha"), ({"alpha": -0.1}, "alpha"), ({"beta": 0.0}, "beta"), ({"beta": -1.0}, "beta"),
     ({"beta": float("nan")}, "beta"), ({"strategy": "greedy"}, "strategy"), ({"eviction": "random"}, "eviction"),
     ({"capacity": 0}, "capacity"), ({"epsilon": -0.1}, "epsilon"), ({"possibility": "mean"}, "possibility"),
     ({"checkpoint_every": 0}, "checkpoint_every")],
)  # fmt: skip
def test_config_validation_names_the_field(fields: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        ReplayConfig(**fields)


def test_stats_report_sizes_counts_and_histogram() -> None:
    buffer = ReplayBuffer(capacity=100, alpha=0.0)
    buffer.add([Experience(problem_id=f"p{i % 3}", code=f"c{i}", per_test=(True,), pass_rate=i / 10)
                for i in range(11)])  # fmt: skip
    summary = buffer.stats()
    assert summary.size == 11 and summary.capacity == 100
    assert summary.per_problem == {"p0": 4, "p1": 4, "p2": 3}
    assert sum(summary.p2value_histogram) == 11 and summary.p2value_histogram[-1] == 2  # 0.9 and 1.0
    assert summary.mean_pass_rate == pytest.approx(0.5) and summary.fully_passing == 1
    assert summary.to_dict()["total_added"] == 11


def test_restore_rebuilds_an_identical_buffer() -> None:
    config = ReplayConfig(capacity=50, strategy="rank", beta=1.5, seed=9)
    buffer = ReplayBuffer(config)
    records = make_experiences(80, seed=4)
    buffer.add(records[:60])
    buffer.add(records[60:])
    restored = ReplayBuffer.restore(buffer.snapshot(), config)
    assert fingerprint(restored) == fingerprint(buffer)
    np.testing.assert_allclose(restored.probabilities()[1], buffer.probabilities()[1])
    assert restored.sample_ids(100).tolist() == buffer.sample_ids(100).tolist()


@pytest.mark.parametrize("strategy", ["power", "rank"])
def test_draws_stay_exact_on_a_deep_tree_through_updates(strategy: str) -> None:
    """20 000 entries make the sum tree 3 levels deep; updated entries move the distribution."""
    buffer = ReplayBuffer(capacity=20_000, strategy=strategy, beta=1.0, seed=8)
    buffer.add(make_experiences(20_000, seed=6, problems=500))
    rng = np.random.default_rng(1)
    for _ in range(20):
        ids = np.unique(buffer.sample_ids(256))
        buffer.update(ids, per_test=[tuple(row) for row in (rng.random((len(ids), 3)) < 0.5).tolist()])
    ids, probs = buffer.probabilities()
    expected = expected_distribution(buffer, ids)
    np.testing.assert_allclose(probs, expected, rtol=1e-9)
    assert chi_square_pvalue(np.concatenate([buffer.sample_ids(256) for _ in range(2000)]), ids, expected) > 0.001


def test_returned_records_carry_every_update() -> None:
    buffer = ReplayBuffer(capacity=50, alpha=0.5, seed=2)
    records = make_experiences(50, seed=3)
    ids = np.array(buffer.add(records).ids)
    untouched = buffer.get(ids[10:])
    buffer.update(ids[:10], per_test=[(True, False, True, True)] * 10, now=77.0)
    buffer.update(ids[5:10], mean_token_logprobs=[-0.5, None, -0.25, -1.0, 0.0], now=88.0)
    sampled_ids, sampled = buffer.sample(2_000)
    by_id = dict(zip(sampled_ids.tolist(), sampled, strict=True))
    got = buffer.get(ids)
    for index, record in enumerate(got[:5]):
        assert record.per_test == (True, False, True, True) and record.pass_rate == 0.75 and record.updated_at == 77.0
        assert record.mean_token_logprob == records[index].mean_token_logprob
        assert record.p2value == pytest.approx(0.5 * record.possibility + 0.5 * 0.75)
    logprobs = [-0.5, None, -0.25, -1.0, 0.0]
    for record, logprob in zip(got[5:10], logprobs, strict=True):
        assert record.updated_at == 88.0 and record.pass_rate == 0.75 and record.mean_token_logprob == logprob
        expected_p2 = 0.75 if logprob is None else 0.5 * np.exp(logprob) + 0.5 * 0.75
        assert record.possibility == (None if logprob is None else pytest.approx(np.exp(logprob)))
        assert record.p2value == pytest.approx(expected_p2)
    assert got[10:] == untouched
    assert sum(i in by_id for i in ids[:10].tolist()) >= 5  # sample() returned updated records too
    assert all(by_id[i] == record for i, record in zip(ids.tolist(), got, strict=True) if i in by_id)
    assert buffer.snapshot().experiences == got


@pytest.mark.parametrize(
    ("rows", "stored"),
    [([(np.True_, np.False_)], (True, False)), ([[True, True, False]], (True, True, False)),
     ([np.array([True, False, False, False])], (True, False, False, False)), ([(True,) * 300], (True,) * 300)],
)  # fmt: skip
def test_update_accepts_any_row_of_bools_and_stores_a_tuple(rows: list, stored: tuple) -> None:
    buffer = ReplayBuffer(capacity=4)
    ids = buffer.add(make_experiences(2)).ids
    shared = (False, True)  # one tuple object for two ids
    buffer.update(ids, per_test=[*rows, shared])
    first, second = buffer.get(ids)
    assert first.per_test == stored and type(first.per_test) is tuple
    assert first.pass_rate == sum(stored) / len(stored)
    assert second.per_test == shared and second.pass_rate == 0.5


def test_eviction_after_many_updates_drops_the_lowest_then_oldest() -> None:
    """Updates reach the eviction tree only when an add evicts; it must then know every change."""
    capacity = 64
    buffer = ReplayBuffer(capacity=capacity, alpha=0.0, seed=4)
    buffer.add([Experience(problem_id="p", code=f"c{i}", per_test=(True,), pass_rate=0.5) for i in range(capacity)])
    rng = np.random.default_rng(9)
    for step in range(40):
        ids = buffer.ids()[rng.choice(capacity, int(rng.integers(1, 12)), replace=False)]
        buffer.update(ids, per_test=[tuple(row) for row in (rng.random((len(ids), 4)) < 0.5).tolist()])
        state = buffer.snapshot()
        lowest = min(range(capacity), key=lambda i: (state.experiences[i].pass_rate, state.seqs[i]))
        result = buffer.add([Experience(problem_id="p", code=f"new{step}", per_test=(True,), pass_rate=1.0)])
        assert result.evicted == 1
        assert state.ids[lowest] not in buffer.ids()
        assert sorted(buffer.ids().tolist()) == sorted([*np.delete(state.ids, lowest).tolist(), result.ids[0]])


def test_updates_rescore_the_ablation_arms_by_their_own_component() -> None:
    records = [Experience(problem_id="p", code=c, per_test=(True, False), mean_token_logprob=-1.0, token_count=1)
               for c in "abc"]  # fmt: skip
    by_pass = ReplayBuffer(capacity=3, strategy="pass_rate")
    ids = by_pass.add(records).ids
    by_pass.update(ids[:2], per_test=[(True, True), (False, False)], mean_token_logprobs=[-0.1, -3.0])
    np.testing.assert_allclose(by_pass.probabilities()[1], np.array([1.0, 0.0, 0.5]) / 1.5)
    by_possibility = ReplayBuffer(capacity=3, strategy="possibility")
    ids = by_possibility.add(records).ids
    by_possibility.update(ids[:2], per_test=[(False,), (True,)], mean_token_logprobs=[-0.1, None])
    weights = np.array([np.exp(-0.1), 1.0, np.exp(-1.0)])  # unknown possibility: the pass rate instead
    np.testing.assert_allclose(by_possibility.probabilities()[1], weights / weights.sum())
