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


# How long the hub may take to accept a TCP connection before it counts as unreachable.
HUB_PROBE_TIMEOUT_S = 3.0


def hub_unreachable(timeout_s: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """Why the Hugging Face hub cannot be reached from here, or None when it is worth trying.

    Without a network ``datasets`` retries five times with backoff (about 25 s) before it gives up; one TCP connect
    to the hub's endpoint (``HF_ENDPOINT``), bounded by ``timeout_s`` including the name lookup, answers the same
    question at once. In offline mode (``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE``) ``datasets`` answers from its
    cache without the network, and behind a proxy a direct connect proves nothing: both are left to ``datasets``.
    """
    import os
    import socket
    import threading
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    # datasets' own rule (datasets.config), read without importing datasets: seconds on a busy machine.
    datasets_flag = os.environ.get("HF_DATASETS_OFFLINE")
    if datasets_flag is None and constants.HF_HUB_OFFLINE:
        return None
    if datasets_flag is not None and datasets_flag.upper() in ("1", "ON", "YES", "TRUE"):
        return None
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    endpoint = urlsplit(constants.ENDPOINT)
    host, port = endpoint.hostname or "", endpoint.port or (443 if endpoint.scheme == "https" else 80)
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                outcome.append(None)
        except OSError as exc:
            outcome.append(exc.strerror or type(exc).__name__)

    probe = threading.Thread(target=connect, name="hub-probe", daemon=True)  # a name lookup ignores the timeout
    probe.start()
    probe.join(timeout_s)
    if not outcome:
        return f"{host}:{port} did not answer within {timeout_s:g} s"
    return f"{host}:{port}: {outcome[0]}" if outcome[0] is not None else None


def read_hub(
    dataset: str,
    hub_id: str,
    *,
    config: str | None = None,
    split: str | None = None,
    tried: str = "no local file given (--data-path)",
    fix: str = "pass a local file with --data-path (path= in Python)",
) -> list[tuple[dict, Where]]:
    """Records from the Hugging Face hub (needs internet, or offline mode with a cached copy). The error says what
    was ``tried`` before the hub and how to ``fix`` it with a local file; an unreachable hub fails in seconds."""
    why = hub_unreachable()
    if why is not None:
        raise DatasetError(dataset, f"{tried} and the Hugging Face hub ({hub_id}) is unreachable ({why}); fix: {fix}")
    try:
        import datasets

        loaded = datasets.load_dataset(hub_id, config, split=split)
    except Exception as exc:
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        raise DatasetError(
            dataset, f"{tried} and loading {hub_id} from the Hugging Face hub failed ({detail}); fix: {fix}"
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
