"""TensorBoard backend: scalars per iteration and the config as text, as event files under ``<run>/tensorboard/``
(``tensorboard --logdir <run>/tensorboard``). Written with tensorboardX, which Ray Tune already installs, so the
core install needs no TensorBoard; reading them back needs ``tensorboard``. Artifacts stay in the run directory."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from btp_ray.tracking.base import Tracker

LOG_DIR = "tensorboard"


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = Path(log_dir)
        self.writer: Any = None

    def start(self, run_name: str, tags: Mapping[str, str]) -> None:
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(logdir=str(self.log_dir), flush_secs=10)
        if tags:
            self.writer.add_text("tags", _table(tags), 0)

    def log_params(self, params: Mapping[str, str]) -> None:
        self.writer.add_text("config", _table(params), 0)
        self.writer.flush()

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Event files hold no files; the run directory already keeps every artifact."""

    def finish(self, status: str) -> None:
        self.writer.add_text("status", status, 0)
        self.writer.close()


def _table(values: Mapping[str, str]) -> str:
    rows = "\n".join(f"| {k} | {str(v).replace('|', '/')} |" for k, v in values.items())
    return "| field | value |\n|---|---|\n" + rows
