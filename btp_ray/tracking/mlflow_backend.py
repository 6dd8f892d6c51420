"""MLflow backend: the run's params, per-iteration metrics and artifacts through ``MlflowClient`` (no global MLflow
state), into a tracking server (``uri='http://…'``) or an embedded SQLite store inside the run directory.

The MLflow run id is kept in ``<run>/tracking.json`` so a resumed BTP run logs into the same MLflow run. Remote calls
are bounded: MLflow's HTTP client retries with exponential backoff for minutes by default, so unless the user set
them, one retry and ``request_timeout_s`` apply (a tracker that is down is noticed in seconds, off the run's path).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from btp_ray.io import atomic_write_json
from btp_ray.tracking.base import Tracker

STATE_FILE = "tracking.json"
EMBEDDED_DIR = "mlflow"
_BATCH = 100  # MLflow accepts at most 100 params and 1000 metrics per log_batch


def embedded_store(directory: Path) -> tuple[str, str]:
    """(tracking URI, artifact location) of the embedded store in ``directory``."""
    root = Path(directory).resolve() / EMBEDDED_DIR
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri()


def artifacts_next_to(uri: str) -> str | None:
    """The artifact location for a SQLite store: ``artifacts/`` beside the database (MLflow's own default is
    ``./mlruns`` in the working directory). None for other stores, which choose their own."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()


def get_or_create_experiment(client: Any, name: str, artifact_location: str | None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location)


def bound_http_requests(timeout_s: int) -> None:
    """Short timeouts and one retry for MLflow's REST client, unless the user configured them."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(timeout_s))


class MLflowTracker(Tracker):
    """One MLflow run. ``uri=None``: the embedded store in ``run_dir``; ``state_dir`` keeps the run id for resume."""

    name = "mlflow"

    def __init__(
        self,
        *,
        experiment: str,
        run_dir: Path,
        uri: str | None = None,
        state_dir: Path | None = None,
        request_timeout_s: int = 10,
    ) -> None:
        self.experiment = experiment
        self.run_dir = Path(run_dir)
        self.uri = uri
        self.state_file = Path(state_dir) / STATE_FILE if state_dir is not None else None
        self.request_timeout_s = request_timeout_s
        self.client: Any = None
        self.run_id: str | None = None

    def start(self, run_name: str, tags: Mapping[str, str]) -> None:
        from mlflow import MlflowClient

        uri = self.uri or embedded_store(self.run_dir)[0]
        artifact_location = artifacts_next_to(uri)
        if uri.startswith("http"):
            bound_http_requests(self.request_timeout_s)
        self.client = MlflowClient(tracking_uri=uri)
        self.run_id = self._previous_run(uri)
        if self.run_id is not None:
            self.client.update_run(self.run_id, status="RUNNING")
            return
        experiment_id = get_or_create_experiment(self.client, self.experiment, artifact_location)
        run = self.client.create_run(experiment_id, run_name=run_name, tags=dict(tags))
        self.run_id = run.info.run_id
        if self.state_file is not None:
            atomic_write_json(self.state_file, {"mlflow": {"tracking_uri": uri, "run_id": self.run_id}})

    def _previous_run(self, uri: str) -> str | None:
        if self.state_file is None or not self.state_file.is_file():
            return None
        saved = json.loads(self.state_file.read_text(encoding="utf-8")).get("mlflow", {})
        return saved.get("run_id") if saved.get("tracking_uri") == uri else None

    def log_params(self, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        items = [Param(k, v) for k, v in params.items() if k not in existing]  # a resumed run keeps its params
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + _BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)
