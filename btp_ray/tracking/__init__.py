"""Experiment tracking: MLflow (default, embedded store in the run directory or a tracking server), TensorBoard and
Weights & Biases (offline) behind one small interface. A tracker never stops or slows a run: see
:class:`~btp_ray.tracking.base.Tracking`."""

from btp_ray.tracking.base import FAILED, FINISHED, KILLED, Tracker, Tracking, flatten_metrics, flatten_params
from btp_ray.tracking.config import BACKENDS, TrackingConfig
from btp_ray.tracking.runs import iteration_metrics, log_run_outputs, open_tracking, track_btp_run

__all__ = [
    "BACKENDS",
    "FAILED",
    "FINISHED",
    "KILLED",
    "Tracker",
    "Tracking",
    "TrackingConfig",
    "flatten_metrics",
    "flatten_params",
    "iteration_metrics",
    "log_run_outputs",
    "open_tracking",
    "track_btp_run",
]
