"""The rank order of the buffer's entries for rank-based sampling, maintained incrementally.

Rank sampling draws a rank r with probability ∝ (1/r)^β, which depends only on the number of entries (a sum tree over
rank positions does that in O(log n)), and then needs the entry at rank r. This module keeps the slots sorted by
(key descending, tiebreak ascending): changes are collected and merged in on the next read, by binary search and one
array insert/delete (memmove-bound O(n), a few milliseconds at 10^6 entries) instead of a full re-sort; draws between
changes cost nothing extra.
"""

from __future__ import annotations

import numpy as np

# Above this fraction of changed entries a full sort is cheaper than merging.
_REBUILD_FRACTION = 0.125


class RankOrder:
    """Slots sorted by (key desc, tiebreak asc). The tiebreak (insertion sequence) makes the order canonical: it
    depends only on the entries, not on the history of updates, so a reloaded buffer ranks identically."""

    def __init__(self, capacity: int) -> None:
        self._order = np.empty(0, dtype=np.int32)
        # The (negated key, tiebreak) each slot had when last merged: the sorted array is sorted by these.
        self._merged_negkey = np.zeros(capacity, dtype=np.float64)
        self._merged_tiebreak = np.zeros(capacity, dtype=np.int64)
        self._merged = np.zeros(capacity, dtype=bool)
        self._pending: set[int] = set()
        self._needs_rebuild = False

    def mark_changed(self, slots: np.ndarray, size: int) -> None:
        """Record that these slots changed key or tiebreak (or were filled); ``size`` is the new entry count."""
        if self._needs_rebuild:
            return
        self._pending.update(np.asarray(slots).tolist())
        if len(self._pending) > _REBUILD_FRACTION * size:
            self._needs_rebuild = True
            self._pending.clear()

    def order(self, keys: np.ndarray, tiebreaks: np.ndarray, size: int) -> np.ndarray:
        """Slots ``0..size-1`` by rank (position 0 = rank 1), after merging pending changes."""
        if self._needs_rebuild:
            self.rebuild(keys, tiebreaks, size)
        elif self._pending:
            self._merge(keys, tiebreaks)
        return self._order

    def rebuild(self, keys: np.ndarray, tiebreaks: np.ndarray, size: int) -> None:
        self._pending.clear()
        self._needs_rebuild = False
        self._merged[:] = False
        self._merged[:size] = True
        self._merged_negkey[:size] = -keys[:size]
        self._merged_tiebreak[:size] = tiebreaks[:size]
        self._order = np.lexsort((tiebreaks[:size], -keys[:size])).astype(np.int32)

    def _merge(self, keys: np.ndarray, tiebreaks: np.ndarray) -> None:
        slots = np.fromiter(self._pending, dtype=np.int64, count=len(self._pending))
        self._pending.clear()
        stale = slots[self._merged[slots]]
        kept = self._order
        if stale.size:
            positions = self._lower_bound(kept, self._merged_negkey[stale], self._merged_tiebreak[stale])
            kept = np.delete(kept, positions)
        negkey, tiebreak = -keys[slots], tiebreaks[slots]
        self._merged_negkey[slots] = negkey
        self._merged_tiebreak[slots] = tiebreak
        self._merged[slots] = True
        by_rank = np.lexsort((tiebreak, negkey))
        positions = self._lower_bound(kept, negkey[by_rank], tiebreak[by_rank])
        self._order = np.insert(kept, positions, slots[by_rank].astype(np.int32))

    def _lower_bound(self, order: np.ndarray, negkey: np.ndarray, tiebreak: np.ndarray) -> np.ndarray:
        """For each (negkey, tiebreak) query, the first position in ``order`` not ordered before it."""
        low = np.zeros(len(negkey), dtype=np.int64)
        high = np.full(len(negkey), len(order), dtype=np.int64)
        last = len(order) - 1
        while True:
            active = low < high
            if not active.any():
                return low
            middle = (low + high) >> 1
            probe = order[np.minimum(middle, last)]
            probe_negkey = self._merged_negkey[probe]
            before = (probe_negkey < negkey) | ((probe_negkey == negkey) & (self._merged_tiebreak[probe] < tiebreak))
            low = np.where(active & before, middle + 1, low)
            high = np.where(active & ~before, middle, high)
