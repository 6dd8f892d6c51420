"""Array-backed trees for the replay buffer: a sum tree (weighted sampling) and an argmin tree (the next entry to
evict). Both work on batches, with their loops compiled (:mod:`btp_ray.replay.kernels`).
"""

from __future__ import annotations

import numpy as np

from btp_ray.replay import kernels
from btp_ray.replay.kernels import FANOUT

# The sum tree's top level has at most this many groups; a draw finds its top group by a binary search over their
# running totals (added up per call), so no level above need be kept. At 10^6 leaves: 4 levels.
FRONTIER_GROUPS = 1 << 8
_CACHE_LINE = 64


def _aligned_zeros(count: int) -> np.ndarray:
    """A float64 array of zeros whose groups of 8 each fill one cache line."""
    raw = np.zeros(count + _CACHE_LINE // 8)
    start = (-raw.ctypes.data % _CACHE_LINE) // 8
    return raw[start : start + count]


class SumTree:
    """Non-negative leaf weights; sampling returns leaf ``i`` with probability weight_i / total.

    An 8-ary tree whose 8 siblings share one cache line, so a draw reads one line per level and an update right after
    a draw of the same leaves finds its lines in cache. Internal weights are recomputed from the children on every
    update (never adjusted by deltas), so rounding error does not accumulate however many updates are made.
    ``frontier_groups`` bounds the top level (tests lower it to exercise several levels on small trees).
    """

    def __init__(self, capacity: int, frontier_groups: int = FRONTIER_GROUPS) -> None:
        self.capacity = capacity
        sizes = []
        nodes = max(capacity, 1)
        while True:
            groups = -(-nodes // FANOUT)
            sizes.append(groups * FANOUT)
            if groups <= frontier_groups:
                break
            nodes = groups
        self._offsets = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
        self._values = _aligned_zeros(int(self._offsets[-1]))  # every level's node weights, leaves first

    @property
    def total(self) -> float:
        return kernels.tree_total(self._values, self._offsets)

    def weights(self, leaves: np.ndarray) -> np.ndarray:
        return self._values[np.asarray(leaves, dtype=np.int64)]

    def set(self, leaves: np.ndarray, weights: np.ndarray) -> None:
        """Set the weights of ``leaves`` (a leaf given twice takes its last weight); O(k log n)."""
        kernels.tree_set(
            self._values, self._offsets, np.asarray(leaves, dtype=np.int64), np.asarray(weights, dtype=np.float64)
        )

    def rebuild(self, weights: np.ndarray) -> None:
        """Replace all leaf weights at once (``weights[i]`` for leaf i, the rest 0); O(n)."""
        leaves = self._values[: self._offsets[1]]
        leaves[:] = 0.0
        leaves[: len(weights)] = weights
        kernels.tree_rebuild(self._values, self._offsets)

    def sample(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """``count`` independent draws of leaves in proportion to their weights (total must be > 0)."""
        return self.find(rng.random(count))

    def find(self, uniforms: np.ndarray) -> np.ndarray:
        """The leaf whose share of [0, 1) (weight_i / total, leaves in order) holds each uniform. A zero-weight leaf
        is never returned, whatever the float rounding (total must be > 0)."""
        return kernels.tree_find(self._values, self._offsets, np.asarray(uniforms, dtype=np.float64))


class ArgminTree:
    """Tracks the leaf with the smallest (key, tiebreak) pair; empty leaves hold key +inf. A tournament tree: each
    node holds the winning leaf below it."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        leaves = 1 << max(0, (capacity - 1).bit_length())
        self.keys = np.full(leaves, np.inf, dtype=np.float64)
        self.tiebreaks = np.full(leaves, np.iinfo(np.int64).max, dtype=np.int64)
        self._winner = np.zeros(2 * leaves, dtype=np.int64)
        self._winner[leaves:] = np.arange(leaves)
        kernels.argmin_rebuild(self.keys, self.tiebreaks, self._winner)

    def argmin(self) -> int:
        return int(self._winner[1])

    def set(self, leaves: np.ndarray, keys: np.ndarray, tiebreaks: np.ndarray) -> None:
        """Set (key, tiebreak) of distinct ``leaves``; O(k log n)."""
        kernels.argmin_set(
            self.keys, self.tiebreaks, self._winner, np.asarray(leaves, dtype=np.int64),
            np.asarray(keys, dtype=np.float64), np.asarray(tiebreaks, dtype=np.int64),
        )  # fmt: skip

    def rebuild(self, keys: np.ndarray, tiebreaks: np.ndarray) -> None:
        """Replace all leaves at once (``keys[i]`` for leaf i, the rest empty); O(n)."""
        self.keys[:] = np.inf
        self.tiebreaks[:] = np.iinfo(np.int64).max
        self.keys[: len(keys)] = keys
        self.tiebreaks[: len(tiebreaks)] = tiebreaks
        kernels.argmin_rebuild(self.keys, self.tiebreaks, self._winner)


class DeferredArgmin:
    """An :class:`ArgminTree` over key and tiebreak arrays owned by the caller, brought up to date only when the
    minimum is asked for. Callers report changed leaves with :meth:`mark_changed`; updates that never meet an
    eviction then cost nothing but the mark, and a backlog larger than an eighth of the capacity is replaced by
    one O(n) rebuild."""

    def __init__(self, capacity: int) -> None:
        self._tree = ArgminTree(capacity)
        self._capacity = capacity
        self._pending: list[np.ndarray] = []
        self._pending_count = 0
        self._needs_rebuild = True

    def mark_changed(self, leaves: np.ndarray) -> None:
        if self._needs_rebuild:
            return
        self._pending.append(np.asarray(leaves, dtype=np.int64))
        self._pending_count += len(leaves)
        if self._pending_count > self._capacity // 8:
            self.invalidate()

    def invalidate(self) -> None:
        """Rebuild from the arrays on the next :meth:`argmin` (after the caller changed them wholesale)."""
        self._needs_rebuild = True
        self._pending.clear()
        self._pending_count = 0

    def argmin(self, keys: np.ndarray, tiebreaks: np.ndarray, size: int) -> int:
        """The leaf in ``0..size-1`` with the smallest (``keys[i]``, ``tiebreaks[i]``)."""
        if self._needs_rebuild:
            self._tree.rebuild(keys[:size], tiebreaks[:size])
            self._needs_rebuild = False
        elif self._pending:
            leaves = np.unique(np.concatenate(self._pending))
            self._tree.set(leaves, keys[leaves], tiebreaks[leaves])
            self._pending.clear()
            self._pending_count = 0
        return self._tree.argmin()
