"""A durable replay buffer: a :class:`ReplayBuffer` whose every acknowledged change is on disk.

This is the logic of the Ray actor (``btp_ray.replay.actor`` wraps it unchanged) and is tested without Ray. Every
``add``/``update`` is applied, then persisted before it returns: as a full snapshot every
``config.checkpoint_every`` calls, and as a journal file for the calls in between. A new instance on the same
directory (a restarted actor, a resumed run) loads the newest snapshot and replays the journal, so every call that
returned is there. Draws made after the last snapshot are not journaled: after a restart the random stream resumes
from the snapshot's state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from btp_ray.replay.buffer import ReplayBuffer
from btp_ray.replay.config import ReplayConfig
from btp_ray.replay.experience import Experience
from btp_ray.replay.results import AddResult, ReplayStats, UpdateResult
from btp_ray.replay.storage import (
    CheckpointStore,
    experiences_to_table,
    export_dataset,
    import_dataset,
    table_to_experiences,
    update_table,
)

logger = logging.getLogger(__name__)


class ReplayService:
    """The replay buffer plus its checkpoint directory (``None``: in memory only, nothing persisted)."""

    def __init__(self, config: ReplayConfig, checkpoint_dir: str | Path | None = None) -> None:
        self.config = config
        self._store = CheckpointStore(checkpoint_dir, keep=config.keep_checkpoints) if checkpoint_dir else None
        self._calls_since_snapshot = 0
        self.buffer = ReplayBuffer(config)
        if self._store is not None:
            self._recover()

    def _recover(self) -> None:
        assert self._store is not None
        loaded = self._store.load()
        if loaded.state is not None:
            self.buffer = ReplayBuffer.restore(loaded.state, self.config)
        for entry in loaded.journal:
            if entry.op == "add":
                self.buffer.add(table_to_experiences(entry.table))
            else:
                self.buffer.update(
                    entry.table.column("id").to_numpy(),
                    per_test=entry.table.column("per_test").to_pylist() if entry.metadata["has_per_test"] else None,
                    mean_token_logprobs=(
                        entry.table.column("mean_token_logprob").to_pylist() if entry.metadata["has_logprobs"] else None
                    ),
                    now=entry.metadata["now"],
                )
        self._calls_since_snapshot = len(loaded.journal)
        logger.info(
            "replay buffer recovered from %s: snapshot %s + %d journaled calls, %d entries",
            self._store.directory,
            loaded.snapshot_path,
            len(loaded.journal),
            len(self.buffer),
        )

    def add(self, experiences: Sequence[Experience]) -> AddResult:
        experiences = list(experiences)
        result = self.buffer.add(experiences)
        if self._store is not None:
            self._persist(lambda store: store.append_journal("add", experiences_to_table(experiences)))
        return result

    def update(
        self,
        ids: Sequence[int] | np.ndarray,
        per_test: Sequence[Sequence[bool]] | None = None,
        mean_token_logprobs: Sequence[float | None] | None = None,
        now: float | None = None,
    ) -> UpdateResult:
        now = time.time() if now is None else now
        result = self.buffer.update(ids, per_test=per_test, mean_token_logprobs=mean_token_logprobs, now=now)
        if self._store is not None:
            metadata = {
                "has_per_test": per_test is not None,
                "has_logprobs": mean_token_logprobs is not None,
                "now": now,
            }
            table = update_table(np.asarray(ids, dtype=np.int64), per_test, mean_token_logprobs)
            self._persist(lambda store: store.append_journal("update", table, metadata))
        return result

    def _persist(self, journal: Callable[[CheckpointStore], object]) -> None:
        assert self._store is not None
        self._calls_since_snapshot += 1
        if self._calls_since_snapshot >= self.config.checkpoint_every:
            self.checkpoint()
        else:
            journal(self._store)

    def checkpoint(self) -> str | None:
        """Write a full snapshot now; returns its path (``None`` without a checkpoint directory)."""
        if self._store is None:
            return None
        path = self._store.write_snapshot(self.buffer.snapshot())
        self._calls_since_snapshot = 0
        return str(path)

    def sample(self, n: int, replace: bool = True) -> tuple[np.ndarray, list[Experience]]:
        return self.buffer.sample(n, replace=replace)

    def get(self, ids: Sequence[int] | np.ndarray) -> list[Experience]:
        return self.buffer.get(ids)

    def entries(self) -> tuple[np.ndarray, list[Experience]]:
        """``(ids, experiences)`` of every entry, in slot order (what re-scoring after training reads)."""
        ids = self.buffer.ids()
        return ids, self.buffer.get(ids)

    def size(self) -> int:
        return len(self.buffer)

    def stats(self) -> ReplayStats:
        return self.buffer.stats()

    def export_dataset(self, path: str | Path) -> str:
        """Write the contents as a ``datasets``-loadable Parquet file; returns its path."""
        return str(export_dataset(self.buffer.snapshot(), path))

    def import_dataset(self, path: str | Path) -> AddResult:
        """Add the experiences of a Parquet file written by :meth:`export_dataset`."""
        return self.add(import_dataset(path))
