"""What every study writes beside its results: the run record (exact config, package versions, git commit, hardware,
seeds). The steps the studies run are the pipeline's (:mod:`btp_ray.pipeline.steps`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from btp_ray.config_io import to_dict
from btp_ray.io import atomic_write_json

logger = logging.getLogger(__name__)

RUN_INFO = "run_info.json"


def run_record(config: Any, seeds: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a rerun needs: the exact config, the seeds, package versions, git commit, hardware, command line."""
    from btp_ray.pipeline.run_dir import environment_record

    return {"config": to_dict(config), "seeds": seeds, "environment": environment_record(), **(extra or {})}


def write_json(path: Path, data: Any) -> Path:
    atomic_write_json(path, data)
    return path
