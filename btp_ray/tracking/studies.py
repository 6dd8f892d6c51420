"""Tracking the experiment suite: every ablation arm and every hyperparameter trial is its own tracked run, grouped
under one experiment (the suite's or the study's directory name unless ``tracking.experiment`` says otherwise) in one
store (the embedded one at the suite's root unless ``tracking.uri`` names another), so they compare side by side."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from btp_ray.tracking.config import TrackingConfig
from btp_ray.tracking.mlflow_backend import embedded_store
from btp_ray.tracking.runs import open_tracking


def study_tracking(settings: TrackingConfig, output_dir: Path) -> TrackingConfig:
    """``settings`` with the store and the experiment fixed for a study writing into ``output_dir``: the suite calls
    it once for its root, so the steps it runs (which call it again) keep the suite's store and experiment."""
    if "mlflow" not in settings.backends:
        return dataclasses.replace(settings, experiment=settings.experiment or Path(output_dir).name)
    uri = settings.uri or embedded_store(Path(output_dir))[0]
    return dataclasses.replace(settings, uri=uri, experiment=settings.experiment or Path(output_dir).resolve().name)


def log_study_run(
    settings: TrackingConfig,
    *,
    run_name: str,
    group: str,
    store_dir: Path,
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
) -> list[str]:
    """One finished arm (or any unit of a study) as a tracked run; returns the backends that failed."""
    tracking = open_tracking(
        settings,
        experiment=settings.experiment or Path(store_dir).name,
        run_name=run_name,
        store_dir=Path(store_dir),
        params=params,
        tags={"btp.study": group},
        group=group,
        run_key=run_name,
    )
    tracking.log_metrics(metrics, step=0)
    tracking.close()
    return sorted(tracking.failed)


def tune_callbacks(settings: TrackingConfig, store_dir: Path, group: str) -> list[Any]:
    """Ray Tune's own MLflow / W&B logger callbacks for a study's trials (one tracked run per trial), each wrapped so
    that a tracker that fails is reported once and the study goes on. TensorBoard: Tune writes event files per trial
    under its storage path already."""
    from btp_ray.tracking.tune import SafeCallback

    callbacks: list[Any] = []
    experiment = settings.experiment or Path(store_dir).name
    if "mlflow" in settings.backends:
        callbacks.append(SafeCallback("mlflow", lambda: _mlflow_callback(settings, experiment, group)))
    if "wandb" in settings.backends:
        callbacks.append(SafeCallback("wandb", lambda: _wandb_callback(settings, experiment, store_dir, group)))
    return callbacks


def _mlflow_callback(settings: TrackingConfig, experiment: str, group: str) -> Any:
    from mlflow import MlflowClient
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    from btp_ray.tracking.mlflow_backend import artifacts_next_to, bound_http_requests, get_or_create_experiment

    assert settings.uri is not None  # study_tracking fixed it
    if settings.uri.startswith("http"):
        bound_http_requests(settings.request_timeout_s)
    # Created here so that an embedded store's artifacts stay next to it (the callback would put them in ./mlruns).
    get_or_create_experiment(MlflowClient(tracking_uri=settings.uri), experiment, artifacts_next_to(settings.uri))
    return MLflowLoggerCallback(tracking_uri=settings.uri, experiment_name=experiment, tags={"btp.study": group})


def _wandb_callback(settings: TrackingConfig, experiment: str, store_dir: Path, group: str) -> Any:
    from ray.air.integrations.wandb import WandbLoggerCallback

    Path(store_dir).mkdir(parents=True, exist_ok=True)
    return WandbLoggerCallback(project=experiment, group=group, mode=settings.wandb_mode, dir=str(store_dir))
