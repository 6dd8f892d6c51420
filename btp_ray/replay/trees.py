"""Array-backed binary trees for the replay buffer: a sum tree (weighted sampling, O(log n) per draw and update) and
an argmin tree (the next entry to evict). Both work on batches: one numpy operation per tree level.

Leaves live at ``[size, 2·size)`` of a flat array, ``size`` a power of two; node ``i`` has children ``2i``, ``2i+1``.
"""

from __future__ import annotations

import numpy as np


def _leaf_count(capacity: int) -> int:
    return 1 << max(0, (capacity - 1).bit_length())


def _unique_sorted(nodes: np.ndarray) -> np.ndarray:
    if nodes.size <= 1:
        return nodes
    keep = np.empty(nodes.size, dtype=bool)
    keep[0] = True
    np.not_equal(nodes[1:], nodes[:-1], out=keep[1:])
    return nodes[keep]


class SumTree:
    """Non-negative leaf weights; sampling returns leaf ``i`` with probability weight_i / total.

    Internal sums are recomputed from their children on every update (never adjusted by deltas), so rounding error
    does not accumulate however many updates are made.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._leaves = _leaf_count(capacity)
        self._depth = self._leaves.bit_length() - 1
        self._tree = np.zeros(2 * self._leaves, dtype=np.float64)

    @property
    def total(self) -> float:
        return float(self._tree[1])

    def weights(self, leaves: np.ndarray) -> np.ndarray:
        return self._tree[np.asarray(leaves, dtype=np.int64) + self._leaves]

    def set(self, leaves: np.ndarray, weights: np.ndarray) -> None:
        """Set the weights of distinct ``leaves``; O(k log n)."""
        leaves = np.asarray(leaves, dtype=np.int64)
        order = np.argsort(leaves)
        nodes = leaves[order] + self._leaves
        self._tree[nodes] = np.asarray(weights, dtype=np.float64)[order]
        tree = self._tree
        for _ in range(self._depth):
            nodes = _unique_sorted(nodes >> 1)
            tree[nodes] = tree[2 * nodes] + tree[2 * nodes + 1]

    def rebuild(self, weights: np.ndarray) -> None:
        """Replace all leaf weights at once (``weights[i]`` for leaf i, the rest 0); O(n)."""
        tree = self._tree
        tree[:] = 0.0
        tree[self._leaves : self._leaves + len(weights)] = weights
        start = self._leaves
        while start > 1:
            parents = tree[start : 2 * start].reshape(-1, 2).sum(axis=1)
            tree[start // 2 : start] = parents
            start //= 2

    def find(self, targets: np.ndarray) -> np.ndarray:
        """The leaf whose cumulative-weight interval holds each target in [0, total).

        A subtree of zero weight is never entered, so float rounding at an interval's edge cannot select a
        zero-weight leaf.
        """
        tree = self._tree
        nodes = np.ones(len(targets), dtype=np.int64)
        remaining = np.array(targets, dtype=np.float64)
        for _ in range(self._depth):
            left = nodes << 1
            left_sum = tree[left]
            go_right = (remaining >= left_sum) & (tree[left + 1] > 0.0)
            remaining -= np.where(go_right, left_sum, 0.0)
            nodes = left + go_right
        return nodes - self._leaves

    def sample(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """``count`` independent draws of leaves in proportion to their weights (total must be > 0)."""
        return self.find(rng.random(count) * self.total)


class ArgminTree:
    """Tracks the leaf with the smallest (key, tiebreak) pair; empty leaves hold key +inf."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._leaves = _leaf_count(capacity)
        self._depth = self._leaves.bit_length() - 1
        self.keys = np.full(self._leaves, np.inf, dtype=np.float64)
        self.tiebreaks = np.full(self._leaves, np.iinfo(np.int64).max, dtype=np.int64)
        self._winner = np.zeros(2 * self._leaves, dtype=np.int64)
        self._winner[self._leaves :] = np.arange(self._leaves)
        self._refresh_all()

    def argmin(self) -> int:
        return int(self._winner[1])

    def min_key(self) -> tuple[float, int]:
        leaf = self.argmin()
        return float(self.keys[leaf]), int(self.tiebreaks[leaf])

    def _pick(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        left_key, right_key = self.keys[left], self.keys[right]
        left_wins = (left_key < right_key) | ((left_key == right_key) & (self.tiebreaks[left] <= self.tiebreaks[right]))
        return np.where(left_wins, left, right)

    def set(self, leaves: np.ndarray, keys: np.ndarray, tiebreaks: np.ndarray) -> None:
        """Set (key, tiebreak) of distinct ``leaves``; O(k log n)."""
        leaves = np.asarray(leaves, dtype=np.int64)
        self.keys[leaves] = keys
        self.tiebreaks[leaves] = tiebreaks
        winner = self._winner
        nodes = np.sort(leaves) + self._leaves
        for _ in range(self._depth):
            nodes = _unique_sorted(nodes >> 1)
            winner[nodes] = self._pick(winner[2 * nodes], winner[2 * nodes + 1])

    def rebuild(self, keys: np.ndarray, tiebreaks: np.ndarray) -> None:
        """Replace all leaves at once (``keys[i]`` for leaf i, the rest empty); O(n)."""
        self.keys[:] = np.inf
        self.tiebreaks[:] = np.iinfo(np.int64).max
        self.keys[: len(keys)] = keys
        self.tiebreaks[: len(tiebreaks)] = tiebreaks
        self._refresh_all()

    def _refresh_all(self) -> None:
        winner = self._winner
        start = self._leaves
        while start > 1:
            children = winner[start : 2 * start]
            winner[start // 2 : start] = self._pick(children[0::2], children[1::2])
            start //= 2
