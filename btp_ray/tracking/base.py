"""One small interface for experiment trackers and a fan-out that makes them harmless to a run.

A :class:`Tracker` backend (MLflow, TensorBoard, W&B) opens one tracked run, logs params, metrics by step and
artifacts, and closes. :class:`Tracking` sends every call to all its backends from one background thread, so the
run never waits on a tracker: a backend that fails (not installed, server down, disk full) is reported with one
warning and dropped for the rest of the run, and nothing is ever raised to the caller. ``close`` waits a bounded time
for what is queued.
"""

from __future__ import annotations

import logging
import math
import queue
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

FINISHED = "FINISHED"
FAILED = "FAILED"
KILLED = "KILLED"
_STOP = object()
_INVALID_NAME = re.compile(r"[^A-Za-z0-9_\-. :/]")


class Tracker(ABC):
    """A tracker backend: one tracked run from ``start`` to ``finish``. Methods may raise; :class:`Tracking`
    contains the failure."""

    name: str = "tracker"

    @abstractmethod
    def start(self, run_name: str, tags: Mapping[str, str]) -> None:
        """Open (or, on a resumed run, reopen) the tracked run."""

    @abstractmethod
    def log_params(self, params: Mapping[str, str]) -> None: ...

    @abstractmethod
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    @abstractmethod
    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Log a file, or a directory's files, under ``artifact_path``."""

    @abstractmethod
    def finish(self, status: str) -> None: ...


class Tracking:
    """Fan-out to tracker backends on a background thread; failures logged once per backend, never raised."""

    def __init__(
        self,
        backends: Sequence[Tracker],
        *,
        run_name: str,
        tags: Mapping[str, str] | None = None,
        close_timeout_s: float = 120.0,
    ) -> None:
        self.backends = list(backends)
        self.failed: dict[str, str] = {}
        self.close_timeout_s = close_timeout_s
        self._queue: queue.Queue[Any] = queue.Queue()
        self._closed = False
        self._thread: threading.Thread | None = None
        if self.backends:
            self._thread = threading.Thread(target=self._drain, name="btp-tracking", daemon=True)
            self._thread.start()
            self._submit(lambda b: b.start(run_name, dict(tags or {})))

    @property
    def active(self) -> list[str]:
        """Names of the backends still logging."""
        return [b.name for b in self.backends if b.name not in self.failed]

    def log_params(self, params: Mapping[str, Any]) -> None:
        clean = {str(k): _param_value(v) for k, v in params.items()}
        self._submit(lambda b: b.log_params(clean))

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        clean = {metric_name(k): float(v) for k, v in metrics.items() if _is_number(v)}
        if clean:
            self._submit(lambda b: b.log_metrics(clean, step))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.exists():
            self._submit(lambda b: b.log_artifact(path, artifact_path))

    def close(self, status: str = FINISHED) -> None:
        """Finish every backend's run and stop the thread, waiting at most ``close_timeout_s`` for the queue."""
        if self._closed:
            return
        if self._thread is None:
            self._closed = True
            return
        self._submit(lambda b: b.finish(status))
        self._closed = True
        self._queue.put(_STOP)
        # an interrupted or failed run is not held back long by its trackers
        timeout = self.close_timeout_s if status == FINISHED else min(self.close_timeout_s, 10.0)
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning(
                "tracking: %s still busy %.0f s after the run ended; left behind (the run directory is complete)",
                ", ".join(self.active),
                timeout,
            )

    def __enter__(self) -> Tracking:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.close(FINISHED if exc_type is None else (KILLED if exc_type is KeyboardInterrupt else FAILED))

    # -- the background thread -----------------------------------------------------------------------------------
    def _submit(self, call: Callable[[Tracker], None]) -> None:
        if self._thread is not None and not self._closed:
            self._queue.put(call)

    def _drain(self) -> None:
        while True:
            call = self._queue.get()
            if call is _STOP:
                return
            for backend in self.backends:
                if backend.name in self.failed:
                    continue
                try:
                    call(backend)
                except Exception as exc:  # a tracker must never take the run down with it
                    self._fail(backend, exc)

    def _fail(self, backend: Tracker, exc: Exception) -> None:
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        self.failed[backend.name] = reason
        hint = " (pip install 'btp-ray[tracking]', or --tracker none)" if isinstance(exc, ImportError) else ""
        logger.warning(
            "tracking: %s failed (%s)%s; the run goes on without it and its results stay in the run directory",
            backend.name,
            reason,
            hint,
        )


def metric_name(key: Any) -> str:
    """A metric key every backend accepts (MLflow: alphanumerics, ``_ - . : /`` and spaces): ``pass@1`` →
    ``pass_at_1``, anything else outside that set → ``_``."""
    return _INVALID_NAME.sub("_", str(key).replace("@", "_at_"))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else ("null" if value is None else str(value))
    return text if len(text) <= 500 else text[:497] + "..."


def flatten_params(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"section.field": value}``; lists stay one value."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, name + "."))
        else:
            flat[name] = value
    return flat


def flatten_metrics(data: Mapping[str, Any], prefix: str = "", skip: frozenset[str] = frozenset()) -> dict[str, float]:
    """The finite numbers of a nested record as ``{"a/b/c": x}`` (lists, strings, booleans and None left out)."""
    flat: dict[str, float] = {}
    for key, value in data.items():
        if key in skip:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, name + "/", skip))
        elif _is_number(value):
            flat[name] = float(value)
    return flat
