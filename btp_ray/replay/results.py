"""What the replay buffer hands out and keeps, apart from its mechanics (:mod:`btp_ray.replay.buffer`).

The outcomes of ``add`` and ``update`` (:class:`AddResult`, :class:`UpdateResult`), the summary ``stats`` returns
(:class:`ReplayStats`), the state a buffer is saved as and rebuilt from (:class:`BufferState`, written by
:mod:`btp_ray.replay.storage`), and the record-level helpers the buffer applies to what it stores: per-test rows
checked and counted (:func:`checked_per_test`) and cheap copies of a stored :class:`Experience` with changed fields
(:func:`rescored_copy`, :func:`copy_with_fields`).
"""

from __future__ import annotations

import marshal
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from btp_ray.replay import kernels
from btp_ray.replay.experience import Experience

HISTOGRAM_BINS = 10


@dataclass(frozen=True)
class AddResult:
    """Outcome of :meth:`ReplayBuffer.add`. ``ids[i]`` is the id now holding input i (the surviving entry for a
    duplicate), or -1 when the input was rejected because the buffer was full of higher-priority entries."""

    ids: tuple[int, ...]
    added: int
    duplicates: int
    evicted: int
    rejected: int


@dataclass(frozen=True)
class UpdateResult:
    """Outcome of :meth:`ReplayBuffer.update`: entries updated, and ids that were no longer in the buffer."""

    updated: int
    missing: tuple[int, ...]


@dataclass(frozen=True)
class ReplayStats:
    """A summary of the buffer's contents and history."""

    size: int
    capacity: int
    strategy: str
    per_problem: dict[str, int]
    p2value_histogram: tuple[int, ...]
    histogram_edges: tuple[float, ...]
    mean_p2value: float
    mean_pass_rate: float
    fully_passing: int
    total_added: int
    duplicates: int
    evicted: int
    rejected: int

    @classmethod
    def of(
        cls,
        p2values: np.ndarray,
        pass_rates: np.ndarray,
        *,
        capacity: int,
        strategy: str,
        per_problem: Mapping[str, int],
        counters: Mapping[str, int],
    ) -> ReplayStats:
        """The summary of a buffer holding entries with these P2Values and pass rates (one per entry)."""
        size = len(p2values)
        edges = np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1)
        histogram, _ = np.histogram(p2values, bins=edges)
        return cls(
            size=size,
            capacity=capacity,
            strategy=strategy,
            per_problem=dict(sorted(per_problem.items())),
            p2value_histogram=tuple(int(count) for count in histogram),
            histogram_edges=tuple(float(edge) for edge in edges),
            mean_p2value=float(p2values.mean()) if size else 0.0,
            mean_pass_rate=float(pass_rates.mean()) if size else 0.0,
            fully_passing=int(np.count_nonzero(pass_rates == 1.0)),
            **counters,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.__dict__,
            "p2value_histogram": list(self.p2value_histogram),
            "histogram_edges": list(self.histogram_edges),
        }


@dataclass
class BufferState:
    """Everything needed to rebuild a buffer: its entries in slot order and its counters (see ``snapshot``)."""

    capacity: int
    experiences: list[Experience]
    ids: np.ndarray
    seqs: np.ndarray
    duplicates: np.ndarray
    next_seq: int
    counters: dict[str, int]
    rng_state: dict[str, Any] = field(default_factory=dict)


def checked_per_test(rows: list[Sequence[bool]]) -> tuple[list[tuple[bool, ...]], np.ndarray]:
    """``rows`` as non-empty tuples of bools, and each row's pass rate; ``ValueError`` for anything else.

    The usual input, tuples of ``True``/``False``, is checked and counted from its ``marshal`` serialisation in one
    compiled pass (a Python loop over every result cost more than the rest of an update); any other input is
    checked and converted row by row.
    """
    try:
        data = marshal.dumps(rows, kernels.MARSHAL_VERSION)
    except ValueError:  # an object marshal cannot write: not a bool, so the slow path will say which
        data = b""
    ok, passed, lengths = kernels.count_marshalled_bool_rows(np.frombuffer(data, dtype=np.uint8), len(rows))
    if ok:
        return rows, passed / lengths
    checked = [check_per_test(results) for results in rows]
    return checked, np.array([sum(results) / len(results) for results in checked], dtype=np.float64)


def check_per_test(results: Sequence[bool]) -> tuple[bool, ...]:
    if not isinstance(results, (tuple, list, np.ndarray)) or not len(results):
        raise ValueError(f"per_test results must be a non-empty tuple or list of bools, got {results!r}")
    if type(results) is tuple and all(result is True or result is False for result in results):
        return results
    if not all(isinstance(result, (bool, np.bool_)) for result in results):
        raise ValueError(f"per_test results must be bools, got {results!r}")
    return tuple(bool(result) for result in results)


def rescored_copy(
    record: Experience,
    per_test: tuple[bool, ...],
    pass_rate: float,
    possibility: float,
    value: float,
    mean_token_logprob: float,
    updated_at: float,
) -> Experience:
    """``record`` with the fields ``update`` changes replaced (NaN possibility or log-prob: ``None``); like
    :func:`copy_with_fields` without building a dict of changes, since it runs for every updated record drawn again."""
    copy = object.__new__(Experience)
    fields = copy.__dict__
    fields.update(record.__dict__)
    fields["per_test"] = per_test
    fields["pass_rate"] = pass_rate
    fields["possibility"] = None if math.isnan(possibility) else possibility
    fields["p2value"] = value
    fields["mean_token_logprob"] = None if math.isnan(mean_token_logprob) else mean_token_logprob
    fields["updated_at"] = updated_at
    return copy


def copy_with_fields(record: Experience, changes: dict[str, Any]) -> Experience:
    """A copy of ``record`` with ``changes`` applied, skipping re-validation: callers pass validated values. (About
    10× cheaper than ``dataclasses.replace``.)"""
    copy = object.__new__(Experience)
    copy.__dict__.update(record.__dict__)
    copy.__dict__.update(changes)
    return copy
