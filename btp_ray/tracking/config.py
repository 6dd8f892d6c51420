"""The ``tracking`` section of the experiment config: which experiment trackers a run logs to and where.

MLflow is on by default with an embedded store inside the run directory (``<run>/mlflow/mlflow.db`` and its
artifacts next to it), so a run is tracked with no server and the store travels with the run; ``uri`` points it at
a tracking server (``http://host:5000``) or a shared store (``sqlite:///path/mlflow.db``) instead. TensorBoard event
files go to ``<run>/tensorboard/``, Weights & Biases to ``<run>/wandb/`` (offline unless ``wandb_mode=online``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

BACKENDS = ("mlflow", "tensorboard", "wandb")
WANDB_MODES = ("offline", "online")


@dataclass(frozen=True)
class TrackingConfig:
    """Experiment tracking of a run (``--tracker``, ``--tracking-uri``).

    ``backends`` lists the trackers (``("none",)`` or an empty list turns tracking off); ``experiment`` names the
    MLflow experiment / W&B project (default: the run's ``name``); ``request_timeout_s`` bounds one call to a remote
    tracker, ``close_timeout_s`` how long the end of a run waits for queued logging before leaving it behind.
    """

    backends: tuple[str, ...] = ("mlflow",)
    uri: str | None = None
    experiment: str | None = None
    wandb_mode: str = "offline"
    log_candidates: bool = True
    log_adapter: bool = True
    request_timeout_s: int = 10
    close_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        backends = (self.backends,) if isinstance(self.backends, str) else tuple(self.backends)
        backends = tuple(b.strip().lower() for b in backends if b.strip())
        if backends in (("none",), ("off",)):
            backends = ()
        unknown = [b for b in backends if b not in BACKENDS]
        if unknown:
            raise ValueError(
                f"backends: unknown tracker {unknown[0]!r}; use a comma-separated list of {', '.join(BACKENDS)}, "
                "or none"
            )
        object.__setattr__(self, "backends", tuple(dict.fromkeys(backends)))
        if self.wandb_mode not in WANDB_MODES:
            raise ValueError(f"wandb_mode: must be one of {', '.join(WANDB_MODES)}; got {self.wandb_mode!r}")
        if self.uri is not None and not self.uri.strip():
            raise ValueError("uri: empty tracking URI; leave it unset for the embedded store in the run directory")
        if self.uri is not None and re.match(r"^[a-z+]+://[^/@]*@", self.uri):
            raise ValueError(
                "uri: the tracking URI carries credentials, which would be written to config.yaml; set "
                "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) instead"
            )
        if self.request_timeout_s < 1:
            raise ValueError(f"request_timeout_s: must be >= 1, got {self.request_timeout_s}")
        if self.close_timeout_s < 0:
            raise ValueError(f"close_timeout_s: must be >= 0, got {self.close_timeout_s}")
