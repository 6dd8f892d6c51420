"""Unit tests of the replay buffer's data structures and compiled loops (no Ray): the 8-ary sum tree (exact draws on
several levels, no zero-weight draws at rounding edges, no drift under updates), the deferred eviction tree, the
incremental rank order and the fast check of per-test results."""

from __future__ import annotations

import marshal

import numpy as np
import pytest
from scipy import stats

from btp_ray.replay import kernels
from btp_ray.replay.rank import RankOrder
from btp_ray.replay.trees import DeferredArgmin, SumTree


def chi_square_pvalue(draws: np.ndarray, probs: np.ndarray) -> float:
    expected = probs * len(draws)
    observed = np.bincount(draws, minlength=len(probs)).astype(float)
    keep = expected > 0
    return float(stats.chisquare(observed[keep], expected[keep]).pvalue)


def random_weights(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    weights = rng.random(count) ** 3
    weights[rng.random(count) < 0.2] = 0.0
    weights[count - 20 :] = 0.0  # a zero tail, so that whole groups and subtrees weigh nothing
    return weights


@pytest.mark.parametrize("batch", [256, 200_000])
def test_sum_tree_draws_follow_the_weights_on_every_level(batch: int) -> None:
    tree = SumTree(3000, frontier_groups=2)  # 3000 leaves -> 375 -> 47 -> 6 groups: 4 levels
    weights = random_weights(3000, seed=1)
    tree.rebuild(weights)
    rng = np.random.default_rng(7)
    draws = np.concatenate([tree.sample(rng, batch) for _ in range(200_000 // batch)])
    assert not np.any(weights[draws] == 0.0)
    assert chi_square_pvalue(draws, weights / weights.sum()) > 0.001
    assert tree.total == pytest.approx(weights.sum(), rel=1e-12)
    np.testing.assert_array_equal(tree.weights(np.arange(3000)), weights)


def test_sum_tree_never_draws_a_zero_weight_leaf_at_interval_boundaries() -> None:
    """Weights over 60 orders of magnitude, mostly zero, and uniforms on (and one float step either side of) every
    interval boundary: no zero-weight leaf may come out."""
    rng = np.random.default_rng(4)
    weights = 10.0 ** rng.uniform(-30, 30, 4096)
    weights[rng.random(4096) < 0.7] = 0.0
    weights[-100:] = 0.0
    tree = SumTree(4096, frontier_groups=1)
    tree.rebuild(weights)
    boundaries = np.cumsum(weights) / weights.sum()
    uniforms = np.concatenate([boundaries, np.nextafter(boundaries, 0.0), np.nextafter(boundaries, 1.0), [0.0]])
    uniforms = np.clip(uniforms, 0.0, np.nextafter(1.0, 0.0))
    leaves = tree.find(uniforms)
    assert np.all(weights[leaves] > 0.0)


def test_a_target_past_a_groups_end_goes_to_its_last_leaf_of_non_zero_weight() -> None:
    """The guard against float rounding putting a target past the end of a group, exercised with a parent that weighs
    more than its children add up to: targets in the excess land on the last leaf with weight, never on the zero
    leaves after it."""
    values = np.zeros(24)  # level 0: leaves 0..15 (two groups); level 1: nodes 16..23 (the top group)
    values[8] = 0.5  # group 1 holds one leaf of weight, then zeros
    values[16], values[17] = 1.0, 1.0  # node 1 claims 1.0, its leaves sum to 0.5
    values[0] = 1.0
    leaves = kernels.tree_find(values, np.array([0, 16, 24]), np.array([0.2, 0.6, 0.9, np.nextafter(1.0, 0.0)]))
    assert leaves.tolist() == [0, 8, 8, 8]


def test_sum_tree_updates_recompute_exactly_what_a_rebuild_gives() -> None:
    """Sums are recomputed from the weights, so millions of updates leave no drift: the internal nodes equal a
    fresh rebuild's bit for bit."""
    rng = np.random.default_rng(3)
    tree = SumTree(5000, frontier_groups=4)
    tree.rebuild(rng.random(5000))
    for _ in range(300):
        leaves = rng.integers(0, 5000, 64)  # repeats allowed: the last weight wins
        tree.set(leaves, rng.random(64) * rng.choice([1e-12, 1.0, 1e9]))
    fresh = SumTree(5000, frontier_groups=4)
    fresh.rebuild(tree.weights(np.arange(5000)))
    np.testing.assert_array_equal(tree._values, fresh._values)


def test_deferred_argmin_matches_a_brute_force_minimum() -> None:
    capacity = 200
    rng = np.random.default_rng(11)
    keys = np.round(rng.random(capacity), 1)  # coarse: many ties, broken by the tiebreak
    tiebreaks = rng.permutation(capacity).astype(np.int64)
    tree = DeferredArgmin(capacity)
    for step in range(400):
        changed = rng.integers(0, capacity, rng.integers(1, 40))  # sometimes past capacity // 8: a rebuild
        keys[changed] = np.round(rng.random(len(changed)), 1)
        tiebreaks[changed] = capacity + step * 64 + np.arange(len(changed))
        tree.mark_changed(changed)
        if step % 3 == 0:
            size = capacity - step % 7
            expected = min(range(size), key=lambda leaf: (keys[leaf], tiebreaks[leaf]))
            assert tree.argmin(keys, tiebreaks, size) == expected


def test_rank_order_merges_changes_into_the_exact_sort() -> None:
    capacity = 500
    rng = np.random.default_rng(5)
    keys = np.zeros(capacity)
    tiebreaks = np.zeros(capacity, dtype=np.int64)
    order = RankOrder(capacity)
    size = 0
    for step in range(120):
        grown = min(capacity, size + int(rng.integers(0, 6)))
        changed = np.unique(np.concatenate([rng.integers(0, max(size, 1), 8), np.arange(size, grown)]))
        changed = changed[changed < grown]
        keys[changed] = np.round(rng.random(len(changed)), 1)
        tiebreaks[changed] = step * capacity + changed
        size = grown
        order.mark_changed(changed, size)
        np.testing.assert_array_equal(order.order(keys, tiebreaks, size), np.lexsort((tiebreaks[:size], -keys[:size])))


def is_list_of_bool_tuples(rows: object) -> bool:
    return type(rows) is list and all(
        type(row) is tuple and row and all(item is True or item is False for item in row) for row in rows
    )


def fast_check(rows: list) -> tuple[bool, list[int], list[int]]:
    data = np.frombuffer(marshal.dumps(rows, kernels.MARSHAL_VERSION), np.uint8)
    ok, passed, lengths = kernels.count_marshalled_bool_rows(data, len(rows))
    return ok, passed.tolist(), lengths.tolist()


@pytest.mark.parametrize(
    "rows",
    [[], [(True,)], [(True, False, True), (False,)], [(True,) * 255], [(True,) * 256], [()], [(1,)], [(True, 0)],
     [(np.True_,)], [[True]], [(True,), [False]], [(None,)], [(True, (False,))], [(1.0,)], ((True,),),
     [(True, False)] * 3, [(True,), ()], [(True, False), (True,) * 300]],
)  # fmt: skip
def test_the_fast_per_test_check_accepts_nothing_but_tuples_of_bools(rows: list) -> None:
    """It may decline valid input (the buffer then checks row by row), but what it accepts it counts right."""
    ok, passed, lengths = fast_check(rows)
    if ok:
        assert is_list_of_bool_tuples(rows)
        assert passed == [sum(row) for row in rows] and lengths == [len(row) for row in rows]
    if not is_list_of_bool_tuples(rows):
        assert not ok


def test_the_fast_per_test_check_takes_fresh_tuples_of_bools() -> None:
    rng = np.random.default_rng(2)
    for _ in range(50):
        shape = (int(rng.integers(0, 300)), int(rng.integers(1, 9)))
        rows = [tuple(row) for row in (rng.random(shape) < 0.5).tolist()]
        assert fast_check(rows) == (True, [sum(row) for row in rows], [len(row) for row in rows])
