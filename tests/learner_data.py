"""Training examples and a small LoRA configuration shared by the learner tests (unit, Ray Train and GPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from btp_ray.training import TrainingConfig, TrainingExample

EXAMPLES = [
    TrainingExample(prompt="Write add(a, b).", program="def add(a, b):\n    return a + b", problem_id="p0"),
    TrainingExample(prompt="Write neg(x).", program="def neg(x):\n    return -x", problem_id="p1"),
    TrainingExample(prompt="Write sq(x).", program="def sq(x):\n    return x * x", problem_id="p2"),
    TrainingExample(prompt="Write ident(x).", program="def ident(x):\n    return x", problem_id="p3"),
]


def lora_config(model: Path | str, **overrides: Any) -> TrainingConfig:
    """LoRA r=8 at a learning rate high enough for the loss to fall within a few steps on :data:`EXAMPLES`."""
    settings: dict[str, Any] = {
        "base_model": str(model),
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "learning_rate": 1e-2,
        "max_steps": 6,
        "per_device_batch_size": 2,
        "max_seq_len": 128,
        "seed": 3,
    }
    settings.update(overrides)
    return TrainingConfig(**settings)
