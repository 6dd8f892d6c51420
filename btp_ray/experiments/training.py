"""Fine-tuning one study arm or trial on a drawn batch: the replay draw becomes SFT examples on exactly the prompt the
sampler showed the model, and a trainer turns them into an adapter.

Two trainers, one training code: :class:`LocalTrainer` runs the plain ``Learner`` in this process and keeps the base
model loaded across arms; :class:`RayTrainTrainer` runs the same ``Learner`` as a Ray Train ``TorchTrainer`` job. On a
small CPU machine the TorchTrainer's fixed start-up (tens of seconds per fit; ``benchmarks/training_throughput.py`` and
each run's ``metrics.json`` measure it) dominates an ablation of arms × seeds fits of a few steps each, so studies
default to the local trainer; on a cluster use ``ray_train``.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from btp_ray.pipeline.records import learner_chats, training_examples
from btp_ray.replay import Experience
from btp_ray.training import TrainingConfig, TrainResult


class TrainerKind(str, enum.Enum):
    LOCAL = "local"
    RAY_TRAIN = "ray_train"


@dataclass(frozen=True)
class TrainSummary:
    """What one fit produced: the adapter folder and the per-step losses."""

    adapter_dir: Path
    losses: tuple[float, ...]
    wall_s: float
    overhead_s: float
    examples: int

    @classmethod
    def of(cls, result: TrainResult, output_dir: Path, *, examples: int, wall_s: float) -> TrainSummary:
        return cls(
            adapter_dir=Path(output_dir),
            losses=tuple(m.loss for m in result.step_metrics),
            wall_s=wall_s,
            overhead_s=result.overhead_seconds,
            examples=examples,
        )

    @property
    def first_loss(self) -> float:
        return self.losses[0]

    @property
    def final_loss(self) -> float:
        return self.losses[-1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "adapter_dir": str(self.adapter_dir),
            "losses": list(self.losses),
            "first_loss": self.first_loss,
            "final_loss": self.final_loss,
            "wall_s": self.wall_s,
            "overhead_s": self.overhead_s,
            "examples": self.examples,
        }


class Trainer(Protocol):
    def train(self, experiences: Sequence[Experience], *, seed: int, output_dir: Path) -> TrainSummary: ...


class LocalTrainer:
    """The one-process ``Learner``; one learner (one loaded base model) per training seed, the latest kept."""

    def __init__(self, config: TrainingConfig) -> None:
        self.config = config
        self._learner: Any = None

    def _learner_for(self, seed: int) -> Any:
        from btp_ray.training import Learner

        if self._learner is None or self._learner.config.seed != seed:
            self._learner = Learner(dataclasses.replace(self.config, seed=seed))
        return self._learner

    def train(
        self, experiences: Sequence[Experience], *, seed: int, output_dir: Path, on_step: Any = None
    ) -> TrainSummary:
        """Fine-tune on ``experiences``; ``on_step`` gets each step's metrics as it happens (a Tune trial's loss)."""
        learner = self._learner_for(seed)
        examples = training_examples(experiences, chat=learner_chats(learner))
        started = time.perf_counter()
        result = learner.train(examples, output_dir=output_dir, iteration=1, on_step=on_step)
        return TrainSummary.of(result, output_dir, examples=len(examples), wall_s=time.perf_counter() - started)


class RayTrainTrainer:
    """The same learner as a Ray Train ``TorchTrainer`` job per fit (needs Ray)."""

    def __init__(self, config: TrainingConfig) -> None:
        self.config = config

    def train(self, experiences: Sequence[Experience], *, seed: int, output_dir: Path) -> TrainSummary:
        from btp_ray.training import RayLearner

        learner = RayLearner(dataclasses.replace(self.config, seed=seed))
        examples = training_examples(experiences, chat=learner_chats(learner))
        started = time.perf_counter()
        result = learner.train(examples, iteration=1, output_dir=output_dir, run_name=f"study-{output_dir.name}")
        return TrainSummary.of(result, output_dir, examples=len(examples), wall_s=time.perf_counter() - started)


def make_trainer(kind: TrainerKind | str, config: TrainingConfig) -> Trainer:
    kind = TrainerKind(kind)
    if kind is TrainerKind.RAY_TRAIN:
        return RayTrainTrainer(config)
    return LocalTrainer(config)
