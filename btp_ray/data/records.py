"""Reading dataset records from local files (JSON Lines, JSON lists, Parquet) or the Hugging Face hub, with
errors that name the dataset, file and row."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from btp_ray.data.errors import DatasetError

Where = dict[str, Any]


def read_records(dataset: str, path: Path) -> Iterator[tuple[dict[str, Any], Where]]:
    """Yield ``(record, where)`` from ``path``; ``where`` (path, row) is for error messages (rows count from 1)."""
    name = path.name
    if name.endswith((".jsonl", ".jsonl.gz")):
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DatasetError(dataset, f"invalid JSON: {exc.msg}", path=path, row=line_no) from exc
                yield _require_object(dataset, record, path, line_no), {"path": path, "row": line_no}
    elif name.endswith(".json"):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DatasetError(dataset, f"invalid JSON: {exc.msg} (line {exc.lineno})", path=path) from exc
        if not isinstance(data, list):
            raise DatasetError(dataset, "expected a JSON list of records", path=path)
        for index, record in enumerate(data, start=1):
            yield _require_object(dataset, record, path, index), {"path": path, "row": index}
    elif name.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:
            raise DatasetError(dataset, f"cannot read Parquet: {exc}", path=path) from exc
        for index, record in enumerate(table.to_pylist(), start=1):
            yield record, {"path": path, "row": index}
    else:
        raise DatasetError(dataset, "unsupported file type; use .jsonl, .jsonl.gz, .json or .parquet", path=path)


def _require_object(dataset: str, record: Any, path: Path, row: int) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise DatasetError(dataset, f"expected a JSON object, got {type(record).__name__}", path=path, row=row)
    return record


def read_hub(
    dataset: str, hub_id: str, *, config: str | None = None, split: str | None = None
) -> list[tuple[dict, Where]]:
    """Records from the Hugging Face hub (needs internet); the error says how to use a local file instead."""
    try:
        import datasets

        loaded = datasets.load_dataset(hub_id, config, split=split)
    except Exception as exc:
        raise DatasetError(
            dataset,
            f"no local file given and loading {hub_id!r} from the Hugging Face hub failed "
            f"({type(exc).__name__}: {exc}). Pass a local file with path= (CLI: --data-path) or set BTP_DATA_DIR",
        ) from exc
    parts = [loaded] if split is not None else list(loaded.values())
    records = []
    for part in parts:
        records.extend((dict(row), {"path": f"hub:{hub_id}", "row": i}) for i, row in enumerate(part, start=1))
    return records


def require(dataset: str, record: dict[str, Any], where: Where, key: str, kind: type | tuple[type, ...]) -> Any:
    """``record[key]`` if it has type ``kind``, else a DatasetError naming the field."""
    value = record.get(key)
    if not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        got = "missing" if key not in record else f"got {type(value).__name__}"
        raise DatasetError(dataset, f"expected {expected} ({got})", field=key, **where)
    return value
