"""The replay buffer as a Ray actor: :class:`ReplayService` wrapped unchanged, one named actor per run.

The actor restarts on failure (``max_restarts``) and reloads its checkpoint directory in the constructor, so a
restarted actor holds every entry whose ``add`` returned. ``max_task_retries=-1`` re-sends calls that were in flight
when it died; a re-sent ``add`` of a batch that was already persisted is merged by de-duplication (its entries are
counted as duplicates, none is stored twice).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray

from btp_ray.replay.config import ReplayConfig
from btp_ray.replay.service import ReplayService

ReplayBufferActor = ray.remote(ReplayService)


def create_replay_actor(
    config: ReplayConfig,
    name: str,
    checkpoint_dir: str | Path | None,
    *,
    namespace: str | None = None,
    max_restarts: int = -1,
    num_cpus: float = 0,
) -> Any:
    """Start (or, if one with this name exists, get) the run's replay actor; returns its handle.

    ``max_restarts=-1`` restarts it without limit; ``num_cpus=0`` keeps it from holding a CPU the samplers need.
    """
    return ReplayBufferActor.options(
        name=name,
        namespace=namespace,
        get_if_exists=True,
        max_restarts=max_restarts,
        max_task_retries=-1,
        num_cpus=num_cpus,
    ).remote(config, str(checkpoint_dir) if checkpoint_dir is not None else None)
