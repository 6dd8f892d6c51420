"""Compiled (numba) loops behind the replay buffer: its sum tree (batched weight updates and batched draws), id
resolution, re-scoring, the check and count of per-test results, and the merge of changed entries into the rank order.

Each ``sample(256)`` + ``update`` step touches a few hundred entries; in numpy every tree level and every column
costs several array operations of about a microsecond each, which at 10^6 entries dominated the step. These loops do
the same work in one call each. They are compiled on first use and cached beside this file (``cache=True``).

Sum-tree layout (see :class:`~btp_ray.replay.trees.SumTree`): level 0 holds the leaf weights; level ``L`` nodes live
at ``[offsets[L], offsets[L + 1])`` of the flat array ``values``, in groups of ``FANOUT`` siblings (one 64-byte cache
line) starting at multiples of ``FANOUT``. Node ``i`` of level ``L + 1`` weighs the sum of group ``i`` of level ``L``,
added in child order; the top level has no parent, its group sums are added up per call. Sums are always added in
the same order, so a group's total is bit-for-bit the running sum a draw computes over it. Loops run level by level
over the whole batch, so the memory reads of different items overlap.
"""

from __future__ import annotations

import numpy as np
from numba import njit

FANOUT = 8
FANOUT_BITS = 3


@njit(cache=True, nogil=True)
def _group_sum(values: np.ndarray, start: int) -> float:
    total = 0.0
    for child in range(FANOUT):
        total += values[start + child]
    return total


@njit(cache=True, nogil=True)
def tree_set(values: np.ndarray, offsets: np.ndarray, leaves: np.ndarray, weights: np.ndarray):
    """Set leaf weights and recompute the sums above them (from the weights, never by adding deltas, so rounding
    error does not accumulate). Leaves may repeat; the last weight wins."""
    levels = len(offsets) - 1
    for item in range(len(leaves)):
        values[leaves[item]] = weights[item]
    groups = leaves >> FANOUT_BITS
    for level in range(levels - 1):
        base, above = offsets[level], offsets[level + 1]
        for item in range(len(groups)):
            values[above + groups[item]] = _group_sum(values, base + (groups[item] << FANOUT_BITS))
        groups = groups >> FANOUT_BITS


@njit(cache=True, nogil=True)
def tree_rebuild(values: np.ndarray, offsets: np.ndarray):
    """Recompute every internal weight from the leaf weights (level 0 of ``values``)."""
    levels = len(offsets) - 1
    for level in range(levels - 1):
        base, above = offsets[level], offsets[level + 1]
        values[above : offsets[level + 2]] = 0.0
        for group in range((above - base) >> FANOUT_BITS):
            values[above + group] = _group_sum(values, base + (group << FANOUT_BITS))


@njit(cache=True, nogil=True)
def _top_cumulative(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Running totals over the top level's groups."""
    top_base = offsets[len(offsets) - 2]
    groups = (offsets[len(offsets) - 1] - top_base) >> FANOUT_BITS
    cumulative = np.empty(groups)
    running = 0.0
    for group in range(groups):
        running += _group_sum(values, top_base + (group << FANOUT_BITS))
        cumulative[group] = running
    return cumulative


@njit(cache=True, nogil=True)
def tree_total(values: np.ndarray, offsets: np.ndarray) -> float:
    """The sum of all weights."""
    return _top_cumulative(values, offsets)[-1]


@njit(cache=True, nogil=True)
def tree_find(values: np.ndarray, offsets: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """The leaf drawn by each uniform in [0, 1): leaf ``i`` for a uniform in its share weight_i / total.

    Within a group the child drawn is the first whose running sum exceeds the remaining target, so its weight is
    > 0; a target that float rounding puts past a group's end goes to the group's last child of non-zero weight. So
    a zero-weight leaf (or subtree) is never drawn. The total must be > 0.
    """
    levels = len(offsets) - 1
    count = len(uniforms)
    cumulative = _top_cumulative(values, offsets)
    groups = len(cumulative)
    total = cumulative[groups - 1]
    nodes = np.empty(count, dtype=np.int64)
    remaining = np.empty(count)
    for item in range(count):
        target = uniforms[item] * total
        # the first group whose running total exceeds the target; branch-free (fixed trip count, selects), since
        # random targets make every branch a coin flip
        low, length = 0, groups
        while length > 1:
            half = length >> 1
            low = low + half if cumulative[low + half - 1] <= target else low
            length -= half
        low += cumulative[low] <= target
        if low == groups:
            low = groups - 1
            while low > 0 and cumulative[low] == cumulative[low - 1]:
                low -= 1
        nodes[item] = low
        remaining[item] = target - (cumulative[low - 1] if low > 0 else 0.0)
    for level in range(levels - 1, -1, -1):
        base = offsets[level]
        # Read each item's group first in a loop of independent loads, so that their cache misses overlap.
        touched = 0.0
        for item in range(count):
            touched += values[base + (nodes[item] << FANOUT_BITS)]
        if touched < 0.0:  # never (weights are >= 0); keeps the reads from being optimised away
            return nodes
        for item in range(count):
            start = base + (nodes[item] << FANOUT_BITS)
            target = remaining[item]
            # the running sums ascend, so the child is the count of those <= target (branch-free as above)
            running = 0.0
            before = 0.0
            child = 0
            for offset in range(FANOUT):
                running += values[start + offset]
                within = running <= target
                child += within
                before = running if within else before
            if child == FANOUT:
                child = FANOUT - 1
                while child > 0 and values[start + child] == 0.0:
                    child -= 1
                before = 0.0
                for previous in range(child):
                    before += values[start + previous]
            remaining[item] = target - before
            nodes[item] = (nodes[item] << FANOUT_BITS) + child
    return nodes


@njit(cache=True, nogil=True)
def resolve_ids(ids: np.ndarray, generation: np.ndarray, capacity: int, size: int):
    """``(slots, present, distinct)``: each id's slot, whether the id is in the buffer (its slot is filled and holds
    the id's generation), and whether no id repeats."""
    count = len(ids)
    slots = np.empty(count, dtype=np.int64)
    present = np.empty(count, dtype=np.bool_)
    for item in range(count):
        entry = ids[item]
        slot = entry % capacity
        slots[item] = slot
        present[item] = entry >= 0 and slot < size and generation[slot] == entry // capacity
    ordered = np.sort(ids)
    distinct = True
    for item in range(1, count):
        if ordered[item] == ordered[item - 1]:
            distinct = False
    return slots, present, distinct


SCORE_P2VALUE = 0
SCORE_PASS_RATE = 1
SCORE_POSSIBILITY = 2


@njit(cache=True, nogil=True)
def rescore(
    slots: np.ndarray,
    pass_rates: np.ndarray,
    possibilities: np.ndarray,
    alpha: float,
    now: float,
    score_kind: int,
    pass_rate: np.ndarray,
    possibility: np.ndarray,
    p2value: np.ndarray,
    score: np.ndarray,
    updated_at: np.ndarray,
    stale: np.ndarray,
) -> np.ndarray:
    """Store new pass rates and/or possibilities (NaN: unknown) of ``slots`` (an empty array keeps the stored ones),
    derive P2Value = α·possibility + (1−α)·pass rate (the pass rate alone when the possibility is unknown) and the
    sampling score (``score_kind``: P2Value, pass rate, or possibility falling back to the pass rate), stamp
    ``now`` and mark the records stale. Returns the new scores."""
    scores = np.empty(len(slots))
    for item in range(len(slots)):
        slot = slots[item]
        rate = pass_rates[item] if len(pass_rates) else pass_rate[slot]
        chance = possibilities[item] if len(possibilities) else possibility[slot]
        known = not np.isnan(chance)
        value = alpha * chance + (1.0 - alpha) * rate if known else rate
        if score_kind == SCORE_PASS_RATE:
            new_score = rate
        elif score_kind == SCORE_POSSIBILITY:
            new_score = chance if known else rate
        else:
            new_score = value
        pass_rate[slot] = rate
        possibility[slot] = chance
        p2value[slot] = value
        score[slot] = new_score
        updated_at[slot] = now
        stale[slot] = True
        scores[item] = new_score
    return scores


# Codes of the ``marshal`` format, version 2 (no back-references): a list or tuple is its code and a 4-byte
# little-endian length, then its items; True and False are one byte each.
MARSHAL_VERSION = 2
_MARSHAL_LIST = ord("[")
_MARSHAL_TUPLE = ord("(")
_MARSHAL_TRUE = ord("T")
_MARSHAL_FALSE = ord("F")


@njit(cache=True, nogil=True)
def _marshal_length(data: np.ndarray, position: int) -> int:
    return (
        np.int64(data[position])
        | (np.int64(data[position + 1]) << 8)
        | (np.int64(data[position + 2]) << 16)
        | (np.int64(data[position + 3]) << 24)
    )


@njit(cache=True, nogil=True)
def count_marshalled_bool_rows(data: np.ndarray, rows: int):
    """``(ok, passed, lengths)`` for ``data`` = ``marshal.dumps(value, MARSHAL_VERSION)``. ``ok``: ``value`` is a
    list of ``rows`` non-empty tuples holding only ``True`` and ``False`` (marshal writes ``T``/``F`` for exactly
    those two objects, and the tuple code for exact tuples only); then ``passed[i]``/``lengths[i]`` count row ``i``'s
    Trues and entries. Anything else gives ``ok = False``, and the caller validates the rows one by one instead."""
    passed = np.zeros(rows, dtype=np.int64)
    lengths = np.zeros(rows, dtype=np.int64)
    size = len(data)
    if size < 5 or data[0] != _MARSHAL_LIST or _marshal_length(data, 1) != rows:
        return False, passed, lengths
    position = 5
    for row in range(rows):
        if position + 5 > size or data[position] != _MARSHAL_TUPLE:
            return False, passed, lengths
        length = _marshal_length(data, position + 1)
        position += 5
        if length == 0 or position + length > size:
            return False, passed, lengths
        for entry in range(position, position + length):
            if data[entry] == _MARSHAL_TRUE:
                passed[row] += 1
            elif data[entry] != _MARSHAL_FALSE:
                return False, passed, lengths
        lengths[row] = length
        position += length
    return position == size, passed, lengths


@njit(cache=True, nogil=True)
def _argmin_pick(keys, tiebreaks, left: int, right: int) -> int:
    """The leaf with the smaller (key, tiebreak); the left one on a tie."""
    if keys[left] < keys[right] or (keys[left] == keys[right] and tiebreaks[left] <= tiebreaks[right]):
        return left
    return right


@njit(cache=True, nogil=True)
def argmin_set(keys, tiebreaks, winner, leaves, new_keys, new_tiebreaks):
    """Set (key, tiebreak) of ``leaves`` in a tournament tree (``winner[node]``: the winning leaf below ``node``,
    leaves at ``len(keys) + leaf``) and replay the matches above them."""
    size = len(keys)
    for item in range(len(leaves)):
        keys[leaves[item]] = new_keys[item]
        tiebreaks[leaves[item]] = new_tiebreaks[item]
    nodes = leaves + size
    while size > 1:
        nodes = nodes >> 1
        for node in nodes:
            winner[node] = _argmin_pick(keys, tiebreaks, winner[2 * node], winner[2 * node + 1])
        size >>= 1


@njit(cache=True, nogil=True)
def argmin_rebuild(keys, tiebreaks, winner):
    """Replay every match of the tournament tree from its leaves."""
    for node in range(len(keys) - 1, 0, -1):
        winner[node] = _argmin_pick(keys, tiebreaks, winner[2 * node], winner[2 * node + 1])


@njit(cache=True, nogil=True)
def _rank_lower_bound(order, negkeys, tiebreaks, negkey: float, tiebreak: int) -> int:
    """The first position of ``order`` whose entry is not ranked before (``negkey``, ``tiebreak``)."""
    low, high = 0, len(order)
    while low < high:
        middle = (low + high) >> 1
        entry = order[middle]
        entry_negkey = negkeys[entry]
        if entry_negkey < negkey or (entry_negkey == negkey and tiebreaks[entry] < tiebreak):
            low = middle + 1
        else:
            high = middle
    return low


@njit(cache=True, nogil=True)
def rank_merge(order, out, slots, merged_negkey, merged_tiebreak, merged, keys, tiebreaks) -> int:
    """Write into ``out`` the rank order ``order`` (slots sorted by (merged_negkey, merged_tiebreak), the keys they
    had when last merged) with the distinct ``slots`` moved to where their current (-``keys``, ``tiebreaks``) rank
    them (slots not in ``order`` yet are inserted), update the merged keys, and return the new length. One pass
    copying the unchanged runs, plus a binary search per changed slot."""
    count = len(slots)
    removed = np.empty(count, dtype=np.int64)
    removals = 0
    for item in range(count):
        slot = slots[item]
        if merged[slot]:
            removed[removals] = _rank_lower_bound(order, merged_negkey, merged_tiebreak, merged_negkey[slot],
                                                  merged_tiebreak[slot])  # fmt: skip
            removals += 1
    removed = np.sort(removed[:removals])
    negkey = np.empty(count)
    tiebreak = np.empty(count, dtype=np.int64)
    for item in range(count):
        negkey[item] = -keys[slots[item]]
        tiebreak[item] = tiebreaks[slots[item]]
    by_tiebreak = np.argsort(tiebreak, kind="mergesort")
    by_rank = by_tiebreak[np.argsort(negkey[by_tiebreak], kind="mergesort")]
    inserted_at = np.empty(count, dtype=np.int64)
    for rank in range(count):  # against the old keys, which ``order`` is sorted by
        item = by_rank[rank]
        inserted_at[rank] = _rank_lower_bound(order, merged_negkey, merged_tiebreak, negkey[item], tiebreak[item])
    for item in range(count):
        slot = slots[item]
        merged_negkey[slot] = negkey[item]
        merged_tiebreak[slot] = tiebreak[item]
        merged[slot] = True
    # Weave: new entries go before the old entry at their insertion point; removed entries are skipped.
    written = 0
    source = 0
    next_removal = 0
    next_insert = 0
    length = len(order)
    while True:
        while next_insert < count and inserted_at[next_insert] == source:
            out[written] = slots[by_rank[next_insert]]
            written += 1
            next_insert += 1
        if source == length:
            return written
        if next_removal < removals and removed[next_removal] == source:
            source += 1
            next_removal += 1
            continue
        stop = length
        if next_removal < removals:
            stop = removed[next_removal]
        if next_insert < count and inserted_at[next_insert] < stop:
            stop = inserted_at[next_insert]
        out[written : written + stop - source] = order[source:stop]
        written += stop - source
        source = stop


@njit(cache=True, nogil=True)
def ids_and_stale(slots: np.ndarray, generation: np.ndarray, stale: np.ndarray, capacity: int):
    """``(ids, stale_slots)``: each slot's current id (slot + capacity · generation), and those of ``slots`` whose
    stored record is stale (each once)."""
    count = len(slots)
    ids = np.empty(count, dtype=np.int64)
    found = np.empty(count, dtype=np.int64)
    stale_count = 0
    for item in range(count):
        slot = slots[item]
        ids[item] = slot + capacity * generation[slot]
        if stale[slot]:
            found[stale_count] = slot
            stale_count += 1
    return ids, np.unique(found[:stale_count])
