"""The P2Value-prioritised replay buffer: a plain, Ray-free class holding every candidate program and drawing the
learner's fine-tuning batches from it.

Entries live in fixed slots ``0..size-1`` of numpy arrays. Sampling is exact: ``power`` (and the ablation arms)
draws from a sum tree over p_i^β; ``rank`` draws a rank position from a sum tree over (1/r)^β and maps it through the
incrementally maintained rank order; ``uniform`` draws slots directly. Each entry has a stable id (``slot + capacity ·
generation``) that stays valid until the entry is evicted, so ``update`` never touches the wrong program even if its
slot was reused. The same seed and the same calls give the same draws.

Performance (a ``sample(256)`` + ``update`` step at 10^6 entries is a few hundred microseconds): the fields that
``update`` changes live in columns (one 64-byte row of numbers per slot, and an array of per-test tuples); the stored
:class:`Experience` of an updated entry is only marked stale and rebuilt from the columns when it is next returned,
so an update allocates no records. The loops over a batch (tree walks, id resolution, re-scoring, the rank merge)
are compiled (:mod:`btp_ray.replay.kernels`), and the eviction tree is brought up to date only when an ``add`` needs
to evict. What the buffer returns and is saved as lives in :mod:`btp_ray.replay.results`.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from btp_ray.replay import kernels
from btp_ray.replay.config import Eviction, ReplayConfig, Strategy
from btp_ray.replay.experience import Experience, dedup_key, possibility_from_logprob, scored
from btp_ray.replay.rank import RankOrder
from btp_ray.replay.results import (
    AddResult,
    BufferState,
    ReplayStats,
    UpdateResult,
    checked_per_test,
    copy_with_fields,
    rescored_copy,
)
from btp_ray.replay.trees import DeferredArgmin, SumTree

_POWER_FAMILY = (Strategy.POWER, Strategy.PASS_RATE, Strategy.POSSIBILITY)
_SCORE_KIND = {
    Strategy.POWER: kernels.SCORE_P2VALUE,
    Strategy.RANK: kernels.SCORE_P2VALUE,
    Strategy.UNIFORM: kernels.SCORE_P2VALUE,
    Strategy.PASS_RATE: kernels.SCORE_PASS_RATE,
    Strategy.POSSIBILITY: kernels.SCORE_POSSIBILITY,
}
_KEEP = np.empty(0)  # to kernels.rescore: keep the stored values
_SLOT_FIELDS = np.dtype(
    {
        "names": ["score", "pass_rate", "possibility", "p2value", "mean_logprob", "updated_at", "generation", "stale"],
        "formats": ["f8", "f8", "f8", "f8", "f8", "f8", "i8", "?"],
        "offsets": [0, 8, 16, 24, 32, 40, 48, 56],
        "itemsize": 64,
    }
)


class ReplayBuffer:
    """Prioritised replay over :class:`Experience` records. Build with a :class:`ReplayConfig`, keyword fields of
    one, or both (keywords override): ``ReplayBuffer(capacity=10_000, strategy="rank", beta=0.5)``.

    Invalid input raises ``ValueError`` and leaves the buffer unchanged.
    """

    def __init__(self, config: ReplayConfig | None = None, **fields: Any) -> None:
        config = config if config is not None else ReplayConfig()
        self.config = replace(config, **fields) if fields else config
        capacity = self.config.capacity
        # Each slot's record and its current per-test results sit side by side (one cache line), since ``update``
        # writes the results of just-sampled records.
        objects = np.empty((capacity, 2), dtype=object)
        self._records = objects[:, 0]
        self._per_test = objects[:, 1]
        # The per-entry numbers that sampling and ``update`` touch share one 64-byte row per slot (one cache line
        # instead of one per column); the attributes below are views of its columns. ``stale``: the stored record
        # predates the columns (``update`` changed them) and is rebuilt from them when next returned.
        table = _slot_table(capacity)
        self._score = table["score"]
        self._pass_rate = table["pass_rate"]
        self._possibility = table["possibility"]  # NaN: unknown
        self._p2value = table["p2value"]
        self._mean_logprob = table["mean_logprob"]  # NaN: unknown
        self._updated_at = table["updated_at"]
        self._generation = table["generation"]
        self._stale = table["stale"]
        self._dedup_keys: list[Any] = [None] * capacity
        self._slot_of: dict[Any, int] = {}
        self._seq = np.zeros(capacity, dtype=np.int64)
        self._duplicates = np.zeros(capacity, dtype=np.int64)
        self._per_problem: Counter[str] = Counter()
        self._size = 0
        self._next_seq = 0
        self._counters = {"total_added": 0, "duplicates": 0, "evicted": 0, "rejected": 0}
        self._rng = np.random.Generator(np.random.PCG64(self.config.seed))
        self._weights = SumTree(capacity)  # power family: leaf = slot
        self._rank_weights = SumTree(capacity)  # rank: leaf = rank position
        self._rank = RankOrder(capacity)
        self._eviction = DeferredArgmin(capacity)
        self._eviction_key = np.zeros(capacity) if self.config.eviction is Eviction.FIFO else self._score

    # ----------------------------------------------------------------------------------------------- inspection
    def __len__(self) -> int:
        return self._size

    @property
    def capacity(self) -> int:
        return self.config.capacity

    def get(self, ids: Sequence[int] | np.ndarray) -> list[Experience]:
        """The experiences with these ids; ``ValueError`` naming any id that is not in the buffer."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        slots, present, _ = kernels.resolve_ids(ids, self._generation, self.capacity, self._size)
        if not present.all():
            raise ValueError(f"ids not in the buffer: {ids[~present].tolist()[:10]}")
        self._refresh_records(slots[self._stale[slots]])
        return self._records[slots].tolist()

    def ids(self) -> np.ndarray:
        """The ids of all entries, in slot order."""
        slots = np.arange(self._size, dtype=np.int64)
        return slots + self.capacity * self._generation[: self._size]

    def probabilities(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, P(id))``: the exact sampling distribution over the current entries (O(n); for tests and
        inspection)."""
        size = self._size
        if size == 0:
            raise ValueError("the replay buffer is empty")
        strategy = self.config.strategy
        if strategy is Strategy.UNIFORM:
            probs = np.full(size, 1.0 / size)
        elif strategy is Strategy.RANK:
            order = self._rank.order(self._score, self._seq, size)
            probs = np.empty(size)
            probs[order] = self._rank_position_weights(np.arange(size))
            probs /= probs.sum()
        else:
            weights = self._weights.weights(np.arange(size))
            probs = weights / weights.sum()
        return self.ids(), probs

    def stats(self) -> ReplayStats:
        size = self._size
        return ReplayStats.of(
            self._p2value[:size],
            self._pass_rate[:size],
            capacity=self.capacity,
            strategy=self.config.strategy.value,
            per_problem=self._per_problem,
            counters=self._counters,
        )

    # ---------------------------------------------------------------------------------------------------- add
    def add(self, experiences: Iterable[Experience]) -> AddResult:
        """Insert experiences, re-deriving possibility and P2Value with this buffer's α and possibility mode.

        An identical (problem, normalised code) pair already stored is merged: the better-scored record is kept and
        the duplicate counted. When full, the configured eviction policy makes room.
        """
        items = list(experiences)
        for item in items:
            if not isinstance(item, Experience):
                raise ValueError(f"ReplayBuffer.add takes Experience records, got {type(item).__name__}")
        records = [self._normalise(item) for item in items]  # validates everything before any change

        changed: dict[int, None] = {}
        unmarked: list[int] = []  # changed slots not yet reported to the eviction tree
        ids: list[int] = []
        size_before = self._size
        added = duplicates = evicted = rejected = 0
        capacity = self.capacity
        fifo = self.config.eviction is Eviction.FIFO
        for record in records:
            score = self._score_of(record)
            key = dedup_key(record.problem_id, record.code) if self.config.deduplicate else None
            slot = self._slot_of.get(key) if key is not None else None
            if slot is not None:
                duplicates += 1
                self._duplicates[slot] += 1
                if score > self._score[slot]:
                    self._store(slot, record, score)
                    changed[slot] = None
                    unmarked.append(slot)
                ids.append(slot + capacity * int(self._generation[slot]))
                continue
            if self._size < capacity:
                slot = self._size
                self._size += 1
            else:
                self._eviction.mark_changed(np.array(unmarked, dtype=np.int64))
                unmarked = []
                slot = self._eviction.argmin(self._eviction_key, self._seq, self._size)
                if not fifo and score < self._score[slot]:
                    rejected += 1
                    ids.append(-1)
                    continue
                self._evict(slot)
                evicted += 1
            self._seq[slot] = self._next_seq
            self._next_seq += 1
            self._store(slot, record, score)
            self._per_problem[record.problem_id] += 1
            if key is not None:
                self._slot_of[key] = slot
            self._dedup_keys[slot] = key
            changed[slot] = None
            unmarked.append(slot)
            added += 1
            ids.append(slot + capacity * int(self._generation[slot]))

        self._eviction.mark_changed(np.array(unmarked, dtype=np.int64))
        self._refresh_priorities(np.fromiter(changed, dtype=np.int64, count=len(changed)), size_before)
        self._counters["total_added"] += added
        self._counters["duplicates"] += duplicates
        self._counters["evicted"] += evicted
        self._counters["rejected"] += rejected
        return AddResult(tuple(ids), added, duplicates, evicted, rejected)

    # ------------------------------------------------------------------------------------------------- sample
    def sample(self, n: int, replace: bool = True) -> tuple[np.ndarray, list[Experience]]:
        """Draw ``n`` entries by the configured strategy: ``(ids, experiences)``.

        Without replacement the draws are successive: each next entry is drawn from the remaining ones in proportion
        to their priorities.
        """
        slots = self._sample_slots(n, replace)
        ids, stale = kernels.ids_and_stale(slots, self._generation, self._stale, self.capacity)
        self._refresh_records(stale)
        return ids, self._records[slots].tolist()

    def sample_ids(self, n: int, replace: bool = True) -> np.ndarray:
        """Like :meth:`sample` but returns only the ids (the fast path for large draws)."""
        slots = self._sample_slots(n, replace)
        return slots + self.capacity * self._generation[slots]

    def _sample_slots(self, n: int, replace: bool) -> np.ndarray:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n must be an integer >= 0, got {n!r}")
        n = int(n)
        size = self._size
        if size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        if not replace and n > size:
            raise ValueError(f"cannot draw n={n} distinct entries without replacement from {size}")
        strategy = self.config.strategy
        if strategy is Strategy.UNIFORM:
            slots = self._rng.integers(0, size, n) if replace else self._rng.choice(size, n, replace=False)
        elif strategy is Strategy.RANK:
            positions = self._draw(self._rank_weights, n, replace)
            slots = self._rank.order(self._score, self._seq, size)[positions]
        else:
            if self._weights.total <= 0.0:
                raise ValueError(
                    "every priority is zero (all scores are 0); set ReplayConfig.epsilon > 0 to keep them drawable"
                )
            slots = self._draw(self._weights, n, replace)
        return np.asarray(slots, dtype=np.int64)

    def _draw(self, tree: SumTree, n: int, replace: bool) -> np.ndarray:
        if replace:
            return tree.sample(self._rng, n)
        # Keeping the first occurrence of each leaf in an i.i.d. sequence is exactly successive sampling without
        # replacement; zeroing the chosen leaves after each round only skips draws that would be discarded.
        chosen: list[np.ndarray] = []
        saved: list[np.ndarray] = []
        remaining = n
        try:
            while remaining:
                if tree.total <= 0.0:
                    raise ValueError(
                        f"only {n - remaining} entries have a non-zero priority; cannot draw n={n} without replacement"
                        " (set ReplayConfig.epsilon > 0)"
                    )
                draws = tree.sample(self._rng, remaining)
                leaves, first = np.unique(draws, return_index=True)
                leaves = leaves[np.argsort(first)]
                chosen.append(leaves)
                saved.append(tree.weights(leaves))
                tree.set(leaves, np.zeros(len(leaves)))
                remaining -= len(leaves)
        finally:
            if chosen:
                tree.set(np.concatenate(chosen), np.concatenate(saved))
        return np.concatenate(chosen) if chosen else np.empty(0, dtype=np.int64)

    # ------------------------------------------------------------------------------------------------- update
    def update(
        self,
        ids: Sequence[int] | np.ndarray,
        per_test: Sequence[Sequence[bool]] | None = None,
        mean_token_logprobs: Sequence[float | None] | None = None,
        now: float | None = None,
    ) -> UpdateResult:
        """Re-score entries after re-testing (``per_test``) and/or re-scoring by a model (``mean_token_logprobs``).

        Ids no longer in the buffer (evicted since they were drawn) are skipped and reported in ``missing``.
        """
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if per_test is None and mean_token_logprobs is None:
            raise ValueError("update needs per_test and/or mean_token_logprobs")
        for name, values in (("per_test", per_test), ("mean_token_logprobs", mean_token_logprobs)):
            if values is not None and len(values) != len(ids):
                raise ValueError(f"update: {name} has {len(values)} entries for {len(ids)} ids")
        slots, present, distinct = kernels.resolve_ids(ids, self._generation, self.capacity, self._size)
        if not distinct:
            raise ValueError("update: ids must be distinct")
        now = time.time() if now is None else float(now)
        all_present = bool(present.all())
        positions = range(len(ids)) if all_present else np.flatnonzero(present).tolist()
        live = slots if all_present else slots[present]

        # Validate and compute everything first: a bad value raises before anything changes.
        if per_test is not None:
            results, pass_rates = checked_per_test(
                per_test if all_present and type(per_test) is list else [per_test[index] for index in positions]
            )
        else:
            pass_rates = _KEEP
        if mean_token_logprobs is not None:
            logprobs = [mean_token_logprobs[index] for index in positions]
            mode = self.config.possibility
            records = self._records[live]
            possibilities = np.array(
                [
                    math.nan if logprob is None else possibility_from_logprob(logprob, record.token_count, mode)
                    for logprob, record in zip(logprobs, records, strict=True)
                ],
                dtype=np.float64,
            )
        else:
            possibilities = _KEEP

        if per_test is not None:
            self._per_test[live] = np.fromiter(results, dtype=object, count=len(results))
        if mean_token_logprobs is not None:
            self._mean_logprob[live] = [math.nan if logprob is None else logprob for logprob in logprobs]
        scores = kernels.rescore(
            live, pass_rates, possibilities, self.config.alpha, now, _SCORE_KIND[self.config.strategy],
            self._pass_rate, self._possibility, self._p2value, self._score, self._updated_at, self._stale,
        )  # fmt: skip
        if live.size:
            self._eviction.mark_changed(live)
            self._refresh_priorities(live, self._size, scores)
        return UpdateResult(updated=int(live.size), missing=tuple(ids[~present].tolist()))

    # --------------------------------------------------------------------------------------- state / restore
    def snapshot(self) -> BufferState:
        size = self._size
        return BufferState(
            capacity=self.capacity,
            experiences=self._refreshed_records(size),
            ids=self.ids(),
            seqs=self._seq[:size].copy(),
            duplicates=self._duplicates[:size].copy(),
            next_seq=self._next_seq,
            counters=dict(self._counters),
            rng_state=self._rng.bit_generator.state,
        )

    @classmethod
    def restore(cls, state: BufferState, config: ReplayConfig) -> ReplayBuffer:
        """Rebuild a buffer from ``state`` under ``config`` (scores are re-derived with ``config``'s α, possibility
        mode and strategy). Ids survive when the capacity is unchanged; otherwise they are reassigned."""
        buffer = cls(config)
        size = len(state.experiences)
        if size > buffer.capacity:
            raise ValueError(f"the saved buffer holds {size} entries, more than capacity={buffer.capacity}")
        records = [buffer._normalise(record) for record in state.experiences]
        same_layout = state.capacity == buffer.capacity
        slots = np.asarray(state.ids, dtype=np.int64) % state.capacity if same_layout else np.arange(size)
        if same_layout and not np.array_equal(np.sort(slots), np.arange(size)):
            raise ValueError("the saved buffer's ids do not occupy slots 0..size-1")
        buffer._size = size
        for slot, record in zip(slots.tolist(), records, strict=True):
            buffer._store(slot, record, buffer._score_of(record))
            buffer._per_problem[record.problem_id] += 1
            if config.deduplicate:
                key = dedup_key(record.problem_id, record.code)
                buffer._slot_of[key] = slot
                buffer._dedup_keys[slot] = key
        if same_layout:
            buffer._generation[slots] = np.asarray(state.ids, dtype=np.int64) // state.capacity
        buffer._seq[slots] = state.seqs
        buffer._duplicates[slots] = state.duplicates
        buffer._next_seq = int(state.next_seq)
        buffer._counters.update(state.counters)
        if state.rng_state:
            buffer._rng.bit_generator.state = state.rng_state
        buffer._rebuild_structures()
        return buffer

    # ----------------------------------------------------------------------------------------------- internals
    def _normalise(self, record: Experience) -> Experience:
        possibility, value = scored(record, self.config.alpha, self.config.possibility)
        if possibility == record.possibility and value == record.p2value:
            return record
        return copy_with_fields(record, {"possibility": possibility, "p2value": value})

    def _score_of(self, record: Experience) -> float:
        strategy = self.config.strategy
        if strategy is Strategy.PASS_RATE:
            return record.pass_rate
        if strategy is Strategy.POSSIBILITY:
            return record.possibility if record.possibility is not None else record.pass_rate
        return record.p2value

    def _store(self, slot: int, record: Experience, score: float) -> None:
        self._records[slot] = record
        self._stale[slot] = False
        self._score[slot] = score
        self._pass_rate[slot] = record.pass_rate
        self._possibility[slot] = math.nan if record.possibility is None else record.possibility
        self._p2value[slot] = record.p2value
        self._per_test[slot] = record.per_test
        self._mean_logprob[slot] = math.nan if record.mean_token_logprob is None else record.mean_token_logprob
        self._updated_at[slot] = record.updated_at

    def _refresh_records(self, stale: np.ndarray) -> None:
        """Rebuild the stored records of the ``stale`` slots from the columns that ``update`` changed."""
        if not stale.size:
            return
        columns = zip(
            stale.tolist(),
            self._per_test[stale].tolist(),
            self._pass_rate[stale].tolist(),
            self._possibility[stale].tolist(),
            self._p2value[stale].tolist(),
            self._mean_logprob[stale].tolist(),
            self._updated_at[stale].tolist(),
            strict=True,
        )
        records = self._records
        for slot, per_test, pass_rate, possibility, value, logprob, updated_at in columns:
            records[slot] = rescored_copy(records[slot], per_test, pass_rate, possibility, value, logprob, updated_at)
        self._stale[stale] = False

    def _refreshed_records(self, size: int) -> list[Experience]:
        """The records in slots ``0..size-1``, up to date."""
        self._refresh_records(np.flatnonzero(self._stale[:size]))
        return self._records[:size].tolist()

    def _evict(self, slot: int) -> None:
        record = self._records[slot]
        self._per_problem[record.problem_id] -= 1
        if not self._per_problem[record.problem_id]:
            del self._per_problem[record.problem_id]
        key = self._dedup_keys[slot]
        if key is not None:
            del self._slot_of[key]
        self._duplicates[slot] = 0
        self._generation[slot] += 1

    def _priority_weights(self, slots: np.ndarray, scores: np.ndarray | None = None) -> np.ndarray:
        """p^β of the entries in ``slots`` (``scores``: their scores, when at hand), floored at ε."""
        scores = self._score[slots] if scores is None else scores
        if self.config.epsilon > 0.0:
            scores = np.maximum(scores, self.config.epsilon)
        return scores**self.config.beta

    def _refresh_priorities(self, slots: np.ndarray, size_before: int, scores: np.ndarray | None = None) -> None:
        strategy = self.config.strategy
        if strategy in _POWER_FAMILY:
            if slots.size:
                self._weights.set(slots, self._priority_weights(slots, scores))
        elif strategy is Strategy.RANK:
            self._rank.mark_changed(slots, self._size)
            if self._size > size_before:
                positions = np.arange(size_before, self._size)
                self._rank_weights.set(positions, self._rank_position_weights(positions))

    def _rank_position_weights(self, positions: np.ndarray) -> np.ndarray:
        """(1/rank)^β for 0-based rank positions."""
        return (positions + 1.0) ** -self.config.beta

    def _rebuild_structures(self) -> None:
        size = self._size
        slots = np.arange(size)
        self._eviction.invalidate()
        if self.config.strategy in _POWER_FAMILY:
            self._weights.rebuild(self._priority_weights(slots))
        elif self.config.strategy is Strategy.RANK:
            self._rank_weights.rebuild(self._rank_position_weights(np.arange(size)))
            self._rank.rebuild(self._score, self._seq, size)


def _slot_table(capacity: int) -> np.ndarray:
    """The per-slot rows (see ``ReplayBuffer.__init__``), zeroed, possibilities unknown, aligned to cache lines."""
    raw = np.zeros((capacity + 1) * _SLOT_FIELDS.itemsize, dtype=np.uint8)
    start = -raw.ctypes.data % _SLOT_FIELDS.itemsize
    table = raw[start : start + capacity * _SLOT_FIELDS.itemsize].view(_SLOT_FIELDS)
    table["possibility"] = np.nan
    table["mean_logprob"] = np.nan
    return table
