"""P2Value-prioritised experience replay: records, the buffer and its result types, its persistence and its Ray actor.

``ReplayBufferActor`` and ``create_replay_actor`` import Ray on first use, so the buffer itself is usable (and
unit-testable) without Ray.
"""

from __future__ import annotations

from typing import Any

from btp_ray.replay.buffer import ReplayBuffer
from btp_ray.replay.config import Eviction, ReplayConfig, Strategy
from btp_ray.replay.experience import (
    Experience,
    PossibilityMode,
    dedup_form,
    p2value,
    possibility_from_logprob,
    scored,
)
from btp_ray.replay.results import AddResult, BufferState, ReplayStats, UpdateResult

__all__ = [
    "AddResult",
    "BufferState",
    "Eviction",
    "Experience",
    "PossibilityMode",
    "ReplayBuffer",
    "ReplayBufferActor",
    "ReplayConfig",
    "ReplayStats",
    "Strategy",
    "UpdateResult",
    "create_replay_actor",
    "dedup_form",
    "p2value",
    "possibility_from_logprob",
    "scored",
]


def __getattr__(name: str) -> Any:
    if name in ("ReplayBufferActor", "create_replay_actor"):
        from btp_ray.replay import actor

        return getattr(actor, name)
    raise AttributeError(f"module 'btp_ray.replay' has no attribute {name!r}")
