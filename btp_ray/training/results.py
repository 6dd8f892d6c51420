"""What one fine-tuning iteration produces: per-step metrics, the adapter's manifest (written next to the PEFT adapter
as ``manifest.json``, read by whoever loads the adapter) and the run's result."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class StepMetrics:
    """One optimizer step, aggregated over all workers (loss averaged, tokens summed)."""

    step: int
    epoch: float
    loss: float
    learning_rate: float
    tokens: int
    tokens_per_second: float
    step_seconds: float
    elapsed_seconds: float
    started_at: float  # wall-clock time.time() when the step began

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AdapterManifest:
    """Identity and provenance of an iteration's output; ``adapter_name`` is what samplers serve it under."""

    adapter_name: str
    adapter_kind: str  # "lora" (PEFT adapter folder) or "full" (complete weights)
    base_model: str
    base_model_path: str
    iteration: int
    data_hash: str
    num_examples: int
    num_truncated: int
    num_skipped: int
    prompt_format: str
    strategy: str
    world_size: int
    target_modules: tuple[str, ...] | None
    metrics: Mapping[str, float]
    config: Mapping[str, Any] = field(default_factory=dict)
    created_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["target_modules"] = list(self.target_modules) if self.target_modules is not None else None
        out["metrics"] = dict(self.metrics)
        out["config"] = dict(self.config)
        return out

    def write(self, directory: str | Path) -> Path:
        path = Path(directory) / MANIFEST_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))
        return path

    @classmethod
    def read(cls, directory: str | Path) -> AdapterManifest:
        data = json.loads((Path(directory) / MANIFEST_FILE).read_text())
        if data.get("target_modules") is not None:
            data["target_modules"] = tuple(data["target_modules"])
        return cls(**data)


@dataclass(frozen=True)
class TrainResult:
    """The outcome of one iteration. ``overhead_seconds`` is the time from the call (``Learner.train`` or
    ``TorchTrainer.fit``) to the first optimizer step: model loading, worker start-up, process-group set-up."""

    adapter_dir: Path
    manifest: AdapterManifest
    step_metrics: tuple[StepMetrics, ...]
    overhead_seconds: float
    train_seconds: float
    total_seconds: float

    @property
    def first_loss(self) -> float:
        return self.step_metrics[0].loss

    @property
    def final_loss(self) -> float:
        return self.step_metrics[-1].loss

    @property
    def tokens_per_second(self) -> float:
        """Tokens trained per second over the whole loop (all workers), excluding the fixed overhead."""
        tokens = sum(metric.tokens for metric in self.step_metrics)
        return tokens / self.train_seconds if self.train_seconds > 0 else 0.0
