"""Unit tests of replay persistence (no Ray): snapshots, journals, recovery, damaged files, dataset export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from btp_ray.replay import Experience, ReplayConfig
from btp_ray.replay.service import ReplayService
from btp_ray.replay.storage import CheckpointError


def batch(start: int, count: int) -> list[Experience]:
    return [Experience(problem_id=f"P/{i % 7}", code=f"return {i}", per_test=(i % 2 == 0, True),
                       mean_token_logprob=-0.01 * (i % 50), token_count=10, created_at=1000.0 + i)
            for i in range(start, start + count)]  # fmt: skip


def contents(service: ReplayService) -> dict[int, Experience]:
    ids = service.buffer.ids()
    return dict(zip(ids.tolist(), service.get(ids), strict=True))


@pytest.mark.parametrize("checkpoint_every", [1, 3])
def test_a_new_service_recovers_every_acknowledged_change(tmp_path: Path, checkpoint_every: int) -> None:
    config = ReplayConfig(capacity=40, strategy="rank", checkpoint_every=checkpoint_every, seed=1)
    service = ReplayService(config, tmp_path)
    for step in range(6):
        service.add(batch(10 * step, 10))  # 60 into 40: evictions too
        ids, _ = service.sample(5, replace=False)
        service.update(ids, per_test=[(True, True)] * 5, now=5000.0 + step)
    service.add(batch(100, 3))  # the 13th mutating call
    reloaded = ReplayService(config, tmp_path)
    assert contents(reloaded) == contents(service)
    assert reloaded.stats() == service.stats()
    assert len(list(tmp_path.glob("snapshot-*.arrow"))) == 2  # keep_checkpoints=2
    # every=3: snapshots at calls 3..12, call 13 is journaled; every=1: no journal at all
    assert len(list(tmp_path.glob("journal-*.arrow"))) == (0 if checkpoint_every == 1 else 1)


def test_journal_between_snapshots_is_replayed(tmp_path: Path) -> None:
    config = ReplayConfig(capacity=100, checkpoint_every=5)
    service = ReplayService(config, tmp_path)
    service.add(batch(0, 10))
    service.add(batch(10, 10))
    ids = service.buffer.ids()[:3]
    service.update(ids, per_test=[(False, False)] * 3, now=42.0)
    assert len(list(tmp_path.glob("journal-*.arrow"))) == 3 and not list(tmp_path.glob("snapshot-*"))
    reloaded = ReplayService(config, tmp_path)
    assert contents(reloaded) == contents(service)
    assert all(record.pass_rate == 0.0 and record.updated_at == 42.0 for record in reloaded.get(ids))
    reloaded.add(batch(20, 5))
    reloaded.add(batch(25, 5))  # the fifth call: snapshot, journals pruned
    assert len(list(tmp_path.glob("snapshot-*.arrow"))) == 1 and not list(tmp_path.glob("journal-*"))
    assert len(ReplayService(config, tmp_path).buffer) == 30


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_snapshot_raises_naming_the_file_and_keeps_the_previous(tmp_path: Path, damage: str) -> None:
    config = ReplayConfig(capacity=100)
    service = ReplayService(config, tmp_path)
    service.add(batch(0, 10))
    service.add(batch(10, 10))
    previous, latest = sorted(tmp_path.glob("snapshot-*.arrow"))
    data = latest.read_bytes()
    latest.write_bytes(
        data[: len(data) // 2] if damage == "truncate" else data[:100] + bytes([data[100] ^ 1]) + data[101:]
    )
    with pytest.raises(CheckpointError, match=latest.name) as error:
        ReplayService(config, tmp_path)
    assert previous.name in str(error.value)
    assert previous.exists() and latest.exists()
    latest.rename(tmp_path / "damaged.bak")
    assert len(ReplayService(config, tmp_path).buffer) == 10  # resumes from the previous snapshot


def test_damaged_journal_raises_naming_the_file(tmp_path: Path) -> None:
    config = ReplayConfig(capacity=100, checkpoint_every=10)
    ReplayService(config, tmp_path).add(batch(0, 4))
    (journal,) = tmp_path.glob("journal-*.arrow")
    journal.write_bytes(journal.read_bytes()[:-7])
    with pytest.raises(CheckpointError, match=journal.name):
        ReplayService(config, tmp_path)


def test_leftover_temporary_files_are_ignored_and_removed(tmp_path: Path) -> None:
    config = ReplayConfig(capacity=100)
    ReplayService(config, tmp_path).add(batch(0, 3))
    leftover = tmp_path / ".snapshot-0000000002-0123456789abcdef.arrow.999.tmp"
    leftover.write_bytes(b"partial")
    assert len(ReplayService(config, tmp_path).buffer) == 3
    assert not leftover.exists()


def test_export_is_loadable_by_datasets_and_imports_back(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    service = ReplayService(ReplayConfig(capacity=50))
    service.add(batch(0, 12))
    path = service.export_dataset(tmp_path / "export" / "replay.parquet")
    dataset = datasets.load_dataset("parquet", data_files=path, split="train", cache_dir=str(tmp_path / "cache"))
    assert dataset.num_rows == 12
    row = dataset[3]
    original = service.get([row["id"]])[0]
    assert row["code"] == original.code and row["per_test"] == list(original.per_test)
    assert row["p2value"] == pytest.approx(original.p2value)
    other = ReplayService(ReplayConfig(capacity=50))
    result = other.import_dataset(path)
    assert result.added == 12
    assert sorted(r.code for r in other.get(other.buffer.ids())) == sorted(r.code for r in contents(service).values())


def test_in_memory_service_persists_nothing(tmp_path: Path) -> None:
    service = ReplayService(ReplayConfig(capacity=10), None)
    service.add(batch(0, 2))
    assert service.checkpoint() is None and service.size() == 2
    assert np.array_equal(np.sort(service.buffer.ids()), np.array([0, 1]))


def test_records_round_trip_and_a_checkpoint_without_the_chat_prompt_column_still_loads() -> None:
    """The chat prompt joined the records after checkpoints existed: an older table (without that column) loads, its
    records taking the default."""
    from btp_ray.replay.storage import experiences_to_table, table_to_experiences

    records = [
        Experience("T/1", "def f():\n    return 1\n", (True, False), prompt="def f():\n", chat_prompt="Complete f.")
    ]
    table = experiences_to_table(records)
    assert [(r.prompt, r.chat_prompt) for r in table_to_experiences(table)] == [("def f():\n", "Complete f.")]
    older = table.drop_columns(["chat_prompt"])
    assert [(r.prompt, r.chat_prompt) for r in table_to_experiences(older)] == [("def f():\n", "")]
    with pytest.raises(ValueError, match="lacks experience columns"):
        table_to_experiences(table.drop_columns(["code"]))
