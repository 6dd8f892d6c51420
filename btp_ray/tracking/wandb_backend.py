"""Weights & Biases backend: offline by default (a run directory under ``<run>/wandb/`` that ``wandb sync`` uploads
later; no network, no key), online with ``wandb_mode=online`` and ``WANDB_API_KEY`` in the environment (never logged).
Config as the run's config, metrics by iteration step, files and the adapter as W&B artifacts."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from btp_ray.tracking.base import Tracker

LOG_DIR = "wandb"


class WandbTracker(Tracker):
    name = "wandb"

    def __init__(self, *, project: str, directory: Path, mode: str = "offline", group: str | None = None) -> None:
        self.project = project
        self.directory = Path(directory)
        self.mode = mode
        self.group = group
        self.run: Any = None

    def start(self, run_name: str, tags: Mapping[str, str]) -> None:
        import wandb

        self.directory.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=self.project,
            name=run_name,
            group=self.group,
            dir=str(self.directory),
            mode=self.mode,
            tags=[f"{k}:{v}"[:64] for k, v in tags.items()],
            reinit="create_new",
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
        )

    def log_params(self, params: Mapping[str, str]) -> None:
        self.run.config.update(dict(params), allow_val_change=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log(dict(metrics), step=step)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        import wandb

        name = re.sub(r"[^A-Za-z0-9_.-]", "-", f"{self.run.name}-{artifact_path or path.name}")
        artifact = wandb.Artifact(name, type="model" if artifact_path == "adapter" else "btp-results")
        if path.is_dir():
            artifact.add_dir(str(path))
        else:
            artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    def finish(self, status: str) -> None:
        import wandb

        self.run.finish(exit_code=0 if status == "FINISHED" else 1)
        # finish() can return before wandb-core's writer has flushed the run file (seen under load); shutting the
        # service down waits for it. A later run in this process starts a new service.
        wandb.teardown()
