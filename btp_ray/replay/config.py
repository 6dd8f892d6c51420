"""Configuration of the replay buffer: sampling strategy, priority exponent, P2Value weight, eviction, persistence."""

from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass
from typing import Any

from btp_ray.replay.experience import PossibilityMode


class Strategy(str, enum.Enum):
    """How the learner's batches are drawn.

    ``power``: P(i) ∝ p_i^β with p_i the P2Value. ``rank``: P(i) ∝ (1/rank_i)^β, rank 1 = highest P2Value, ties
    broken by insertion order (older first). ``uniform``: every entry alike. ``pass_rate`` and ``possibility``: the
    ablation arms, ``power`` on the pass rate alone (α = 0) or the possibility alone (α = 1; entries without a
    possibility fall back to their pass rate).
    """

    POWER = "power"
    RANK = "rank"
    UNIFORM = "uniform"
    PASS_RATE = "pass_rate"
    POSSIBILITY = "possibility"


class Eviction(str, enum.Enum):
    """Which entry leaves when the buffer is full.

    ``lowest_priority``: the entry with the lowest sampling key (the P2Value, or the ablation arm's score), the
    oldest among equals; an incoming entry that scores lower than every stored one is not stored (counted as
    rejected). ``fifo``: the oldest entry.
    """

    LOWEST_PRIORITY = "lowest_priority"
    FIFO = "fifo"


@dataclass(frozen=True)
class ReplayConfig:
    """Frozen, validated configuration of a :class:`~btp_ray.replay.ReplayBuffer` and its actor.

    ``beta`` is the priority exponent (the original suite's ``--sampling-alpha``); ``alpha`` the P2Value weight (the
    original suite's ``--p2value-alpha``). ``epsilon`` > 0 floors every priority at ε so that zero-scored entries stay
    drawable; the default 0 keeps the distribution exactly as defined. ``checkpoint_every``: the actor writes a full
    snapshot every this many mutating calls (add/update) and journals the calls in between, so nothing acknowledged is
    lost either way. ``keep_checkpoints``: snapshots kept on disk (the newest and its predecessors).

    ``rescore_after_train`` (a pipeline option; the buffer itself ignores it): after each fine-tuning round, score
    every buffered program again under the target with its new adapter (teacher-forced mean token log-prob, the
    learner's own format; :mod:`btp_ray.pipeline.rescore`) and update the buffer, so that the next draws rank programs
    by how likely the model being trained now finds them, not by how likely the model that wrote them did.
    """

    capacity: int = 100_000
    strategy: Strategy = Strategy.POWER
    beta: float = 1.0
    alpha: float = 0.5
    possibility: PossibilityMode = PossibilityMode.GEOMETRIC
    eviction: Eviction = Eviction.LOWEST_PRIORITY
    epsilon: float = 0.0
    seed: int = 0
    deduplicate: bool = True
    checkpoint_every: int = 1
    keep_checkpoints: int = 2
    rescore_after_train: bool = False

    def __post_init__(self) -> None:
        for name, enum_type in (
            ("strategy", Strategy),
            ("possibility", PossibilityMode),
            ("eviction", Eviction),
        ):
            try:
                object.__setattr__(self, name, enum_type(getattr(self, name)))
            except ValueError:
                choices = ", ".join(member.value for member in enum_type)
                raise ValueError(f"ReplayConfig.{name}={getattr(self, name)!r}: choose one of {choices}") from None
        for name, minimum in (("capacity", 1), ("checkpoint_every", 1), ("keep_checkpoints", 1), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"ReplayConfig.{name} must be an integer >= {minimum}, got {value!r}")
        if self.capacity >= 2**31:
            raise ValueError(f"ReplayConfig.capacity must be < 2**31, got {self.capacity}")
        if not _is_number(self.beta) or not (math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(
                f"ReplayConfig.beta (the priority exponent) must be a finite number > 0, got {self.beta!r}"
            )
        if not _is_number(self.alpha) or not (0.0 <= self.alpha <= 1.0):
            raise ValueError(f"ReplayConfig.alpha (the P2Value weight) must be in [0, 1], got {self.alpha!r}")
        if not _is_number(self.epsilon) or not (0.0 <= self.epsilon < 1.0):
            raise ValueError(f"ReplayConfig.epsilon (the priority floor) must be in [0, 1), got {self.epsilon!r}")
        for name in ("deduplicate", "rescore_after_train"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"ReplayConfig.{name} must be a bool, got {getattr(self, name)!r}")
        object.__setattr__(self, "beta", float(self.beta))
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "epsilon", float(self.epsilon))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("strategy", "possibility", "eviction"):
            data[name] = data[name].value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReplayConfig:
        return cls(**data)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
