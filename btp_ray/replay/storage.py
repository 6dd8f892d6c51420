"""On-disk forms of the replay buffer: crash-safe checkpoints (Arrow IPC) and a Hugging Face ``datasets`` export.

A checkpoint directory holds full snapshots ``snapshot-<gen>-<sha>.arrow`` and, between snapshots, one journal file
per mutating call ``journal-<gen>-<n>-<sha>.arrow`` (an add batch or an update), replayed on top of snapshot
``<gen>`` (0 = the empty buffer). Every file is written to a temporary name, fsynced and renamed, so a crash leaves
either the old or the new file, never a partial one; the name carries the first 16 hex digits of the file's SHA-256,
so a truncated or corrupted file is detected on load and reported by name. The newest ``keep`` snapshots are kept;
journals are deleted only once a later snapshot contains them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from btp_ray.replay.experience import Experience
from btp_ray.replay.results import BufferState

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_META_KEY = b"btp_replay"
_SNAPSHOT = re.compile(r"^snapshot-(\d{10})-([0-9a-f]{16})\.arrow$")
_JOURNAL = re.compile(r"^journal-(\d{10})-(\d{8})-([0-9a-f]{16})\.arrow$")

EXPERIENCE_SCHEMA = pa.schema(
    [
        ("problem_id", pa.string()),
        ("prompt", pa.string()),
        ("chat_prompt", pa.string()),
        ("code", pa.string()),
        ("source_model", pa.string()),
        ("iteration", pa.int64()),
        ("token_count", pa.int64()),
        ("mean_token_logprob", pa.float64()),
        ("possibility", pa.float64()),
        ("per_test", pa.list_(pa.bool_())),
        ("pass_rate", pa.float64()),
        ("p2value", pa.float64()),
        ("created_at", pa.float64()),
        ("updated_at", pa.float64()),
    ]
)
# Columns that checkpoints written before them lack; such records take the field's default.
_ADDED_LATER = frozenset({"chat_prompt"})
_BOOKKEEPING = [("id", pa.int64()), ("seq", pa.int64()), ("duplicates", pa.int64())]


class CheckpointError(ValueError):
    """A checkpoint file is corrupt, truncated or not a replay checkpoint; the message names the file."""


def experiences_to_table(experiences: Sequence[Experience], **bookkeeping: np.ndarray) -> pa.Table:
    """Experiences as an Arrow table (one column per field), plus optional int64 columns (``id``, ``seq``, …)."""
    columns: dict[str, Any] = {
        name: [getattr(record, name) for record in experiences] for name in EXPERIENCE_SCHEMA.names
    }
    columns["per_test"] = [list(record.per_test) for record in experiences]
    fields = list(EXPERIENCE_SCHEMA)
    for name, values in bookkeeping.items():
        columns[name] = pa.array(np.asarray(values, dtype=np.int64))
        fields.append(pa.field(name, pa.int64()))
    return pa.table(columns, schema=pa.schema(fields))


def table_to_experiences(table: pa.Table) -> list[Experience]:
    """The inverse of :func:`experiences_to_table` (extra columns are ignored). Records are re-validated."""
    missing = [name for name in EXPERIENCE_SCHEMA.names if name not in table.column_names and name not in _ADDED_LATER]
    if missing:
        raise ValueError(f"table lacks experience columns {missing}")
    names = [name for name in EXPERIENCE_SCHEMA.names if name in table.column_names]
    columns = {name: table.column(name).to_pylist() for name in names}
    return [Experience(**{name: columns[name][row] for name in names}) for row in range(table.num_rows)]


def _serialise(table: pa.Table, metadata: dict[str, Any]) -> bytes:
    schema = table.schema.with_metadata({_META_KEY: json.dumps({"format": FORMAT_VERSION, **metadata})})
    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, schema) as writer:
        writer.write_table(table.replace_schema_metadata(schema.metadata))
    return sink.getvalue().to_pybytes()


def _write_atomic(directory: Path, name_without_digest: str, data: bytes) -> Path:
    digest = hashlib.sha256(data).hexdigest()[:16]
    final = directory / f"{name_without_digest}-{digest}.arrow"
    temporary = directory / f".{final.name}.{os.getpid()}.tmp"
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, final)
    directory_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)
    return final


def read_checkpoint_file(path: Path, expected_digest: str) -> tuple[pa.Table, dict[str, Any]]:
    """Read and verify one checkpoint file; :class:`CheckpointError` naming it when it is damaged."""
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()[:16]
    if actual != expected_digest:
        raise CheckpointError(
            f"replay checkpoint {path} is corrupt or truncated: its SHA-256 starts {actual}, its name says "
            f"{expected_digest} ({len(data)} bytes)"
        )
    try:
        table = ipc.open_file(pa.BufferReader(data)).read_all()
        metadata = json.loads(table.schema.metadata[_META_KEY])
    except (pa.ArrowInvalid, KeyError, TypeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"replay checkpoint {path} is not a readable replay checkpoint: {error}") from error
    if metadata.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"replay checkpoint {path} has format {metadata.get('format')}, expected {FORMAT_VERSION}"
        )
    return table, metadata


@dataclass(frozen=True)
class JournalEntry:
    """One journaled mutating call: ``op`` is ``"add"`` (the table holds the experiences as passed to ``add``) or
    ``"update"`` (columns ``id``, ``per_test``, ``mean_token_logprob``; metadata says which were given)."""

    op: str
    table: pa.Table
    metadata: dict[str, Any]
    path: Path


@dataclass(frozen=True)
class LoadedCheckpoint:
    generation: int
    state: BufferState | None
    journal: tuple[JournalEntry, ...]
    snapshot_path: Path | None


class CheckpointStore:
    """Snapshots and journals of one buffer in ``directory`` (created if missing)."""

    def __init__(self, directory: str | Path, keep: int = 2) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self.generation = 0
        self._journal_count = 0

    def _snapshots(self) -> list[tuple[int, str, Path]]:
        found = []
        for path in self.directory.iterdir():
            match = _SNAPSHOT.match(path.name)
            if match:
                found.append((int(match.group(1)), match.group(2), path))
        return sorted(found)

    def _journals(self) -> list[tuple[int, int, str, Path]]:
        found = []
        for path in self.directory.iterdir():
            match = _JOURNAL.match(path.name)
            if match:
                found.append((int(match.group(1)), int(match.group(2)), match.group(3), path))
        return sorted(found)

    def load(self) -> LoadedCheckpoint:
        """The newest snapshot and the journal written after it. A damaged file raises :class:`CheckpointError`
        and nothing is deleted, so the previous snapshot stays available."""
        for stale in self.directory.glob(".*.tmp"):
            stale.unlink()
        snapshots = self._snapshots()
        state: BufferState | None = None
        snapshot_path: Path | None = None
        generation = 0
        if snapshots:
            generation, digest, snapshot_path = snapshots[-1]
            try:
                table, metadata = read_checkpoint_file(snapshot_path, digest)
            except CheckpointError as error:
                previous = snapshots[-2][2] if len(snapshots) > 1 else None
                hint = (
                    f"; the previous snapshot {previous} is intact: move {snapshot_path.name} aside to resume from it"
                    if previous
                    else "; there is no earlier snapshot"
                )
                raise CheckpointError(f"{error}{hint}") from error
            state = BufferState(
                capacity=int(metadata["capacity"]),
                experiences=table_to_experiences(table),
                ids=table.column("id").to_numpy(),
                seqs=table.column("seq").to_numpy(),
                duplicates=table.column("duplicates").to_numpy(),
                next_seq=int(metadata["next_seq"]),
                counters={key: int(value) for key, value in metadata["counters"].items()},
                rng_state=metadata["rng_state"],
            )
        journal = []
        for journal_generation, _, digest, path in self._journals():
            if journal_generation != generation:
                continue
            table, metadata = read_checkpoint_file(path, digest)
            journal.append(JournalEntry(metadata["op"], table, metadata, path))
        self.generation = generation
        self._journal_count = len(journal)
        return LoadedCheckpoint(generation, state, tuple(journal), snapshot_path)

    def write_snapshot(self, state: BufferState) -> Path:
        """Write a full snapshot as the next generation, then prune old snapshots and the journals it subsumes."""
        table = experiences_to_table(state.experiences, id=state.ids, seq=state.seqs, duplicates=state.duplicates)
        metadata = {
            "capacity": state.capacity,
            "next_seq": state.next_seq,
            "counters": state.counters,
            "rng_state": state.rng_state,
        }
        path = _write_atomic(self.directory, f"snapshot-{self.generation + 1:010d}", _serialise(table, metadata))
        self.generation += 1
        self._journal_count = 0
        for generation, _, old in self._snapshots()[: -self.keep]:
            logger.debug("pruning replay snapshot %s (generation %d)", old, generation)
            old.unlink()
        for generation, _, _, old in self._journals():
            if generation < self.generation:
                old.unlink()
        return path

    def append_journal(self, op: str, table: pa.Table, metadata: dict[str, Any] | None = None) -> Path:
        """Durably record one mutating call made after the current snapshot."""
        data = _serialise(table, {"op": op, **(metadata or {})})
        self._journal_count += 1
        return _write_atomic(self.directory, f"journal-{self.generation:010d}-{self._journal_count:08d}", data)


def update_table(
    ids: np.ndarray, per_test: Sequence[Sequence[bool]] | None, mean_token_logprobs: Sequence[float | None] | None
) -> pa.Table:
    """The journal form of an ``update`` call."""
    count = len(ids)
    return pa.table(
        {
            "id": pa.array(np.asarray(ids, dtype=np.int64)),
            "per_test": pa.array(
                [list(results) for results in per_test] if per_test is not None else [None] * count,
                type=pa.list_(pa.bool_()),
            ),
            "mean_token_logprob": pa.array(
                list(mean_token_logprobs) if mean_token_logprobs is not None else [None] * count, type=pa.float64()
            ),
        }
    )


def export_dataset(state: BufferState, path: str | Path) -> Path:
    """Write the buffer's entries as Parquet, loadable with ``datasets.load_dataset("parquet", data_files=path)``.

    Columns: every :class:`Experience` field plus ``id``, ``seq`` and ``duplicates``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = experiences_to_table(state.experiences, id=state.ids, seq=state.seqs, duplicates=state.duplicates)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, temporary)
    os.replace(temporary, path)
    return path


def import_dataset(path: str | Path) -> list[Experience]:
    """Experiences from a Parquet file written by :func:`export_dataset` (or any table with the same columns)."""
    return table_to_experiences(pq.read_table(path))
