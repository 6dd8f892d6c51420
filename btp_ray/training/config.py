"""The learner's typed configuration (what to fine-tune, how, on what hardware) and its typed error.

Every field is checked in ``__post_init__``: a wrong value raises ``ValueError`` naming the field and the fix, before
any model is loaded or any Ray worker is started.
"""

from __future__ import annotations

import enum
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class LearnerError(RuntimeError):
    """The learner refuses its input (empty batch, no program tokens, unknown base model, bad LoRA targets, a
    DeepSpeed config that contradicts the training config) or training failed."""


class PromptFormat(str, enum.Enum):
    CHAT = "chat"  # user turn = prompt, assistant turn = the program in a ```python fence
    RAW = "raw"  # prompt text followed by the completion
    AUTO = "auto"  # chat when the tokenizer has a chat template, raw otherwise


class Strategy(str, enum.Enum):
    DDP = "ddp"
    DEEPSPEED = "deepspeed"


class Weighting(str, enum.Enum):
    NONE = "none"  # the paper: train plainly on the sampled batch
    PRIORITY = "priority"  # each example's mean token loss weighted by its (priority) weight


LR_SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")

# DeepSpeed config keys the learner derives from this config; a user config may repeat them only with equal values.
_DEEPSPEED_DERIVED_KEYS = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps")


def default_torch_extensions_dir() -> Path:
    """Where DeepSpeed's JIT-built ops (the CPU shared-memory comm op, ~2.5 min to build) are cached:
    ``$TORCH_EXTENSIONS_DIR`` if set, else ``$BTP_CACHE_DIR/torch_extensions`` (``~/.cache/btp-ray``)."""
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"])
    base = Path(os.environ.get("BTP_CACHE_DIR", Path.home() / ".cache" / "btp-ray")).expanduser()
    return base / "torch_extensions"


@dataclass(frozen=True)
class TrainingConfig:
    """How one BTP iteration fine-tunes the target model.

    ``base_model`` is anything ``btp_ray.models.resolve_model`` accepts (alias, local path, hub id in the local
    cache). ``target_modules=None`` picks LoRA targets per architecture. ``max_steps > 0`` overrides ``num_epochs``.
    ``deepspeed_config`` holds extra DeepSpeed keys merged over the derived ones (``strategy="deepspeed"`` only).
    """

    base_model: str
    use_lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None
    learning_rate: float = 2e-4
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    num_epochs: int = 1
    max_steps: int = 0
    per_device_batch_size: int = 2
    gradient_accumulation_steps: int = 1
    max_seq_len: int = 1024
    warmup_ratio: float = 0.0
    lr_scheduler: str = "linear"
    seed: int = 0
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    strategy: Strategy = Strategy.DDP
    zero_stage: int = 2
    bf16: bool = False
    cpu_offload: bool = False
    weighting: Weighting = Weighting.NONE
    prompt_format: PromptFormat = PromptFormat.AUTO
    system_prompt: str | None = None
    storage_path: str | None = None
    deepspeed_config: Mapping[str, Any] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.base_model, str) or not self.base_model.strip():
            raise ValueError("base_model: give a model alias, local directory or hub id (it is empty)")
        for name in ("strategy", "weighting", "prompt_format"):
            self._coerce_enum(name)
        if self.target_modules is not None:
            modules = (self.target_modules,) if isinstance(self.target_modules, str) else tuple(self.target_modules)
            if not modules or not all(isinstance(m, str) and m for m in modules):
                raise ValueError("target_modules: give module names such as ('q_proj', 'v_proj'), or None for auto")
            object.__setattr__(self, "target_modules", modules)
        positive_ints = ("lora_r", "per_device_batch_size", "gradient_accumulation_steps", "max_seq_len", "num_workers")
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be a positive integer, got {value!r}")
        if self.max_seq_len < 8:
            raise ValueError(f"max_seq_len: {self.max_seq_len} leaves no room for a prompt and a program; use >= 8")
        if self.lora_alpha <= 0:
            raise ValueError(f"lora_alpha: must be positive, got {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout: must be in [0, 1), got {self.lora_dropout}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate: must be a positive number, got {self.learning_rate}")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ValueError("weight_decay / max_grad_norm: must be >= 0 (max_grad_norm 0 disables clipping)")
        if self.num_epochs < 1 and self.max_steps < 1:
            raise ValueError("num_epochs: must be >= 1 unless max_steps > 0")
        if self.max_steps < 0:
            raise ValueError(f"max_steps: must be >= 0 (0 = run num_epochs), got {self.max_steps}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio: must be in [0, 1), got {self.warmup_ratio}")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ValueError(f"lr_scheduler: {self.lr_scheduler!r} is not one of {', '.join(LR_SCHEDULERS)}")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"cpus_per_worker: must be positive, got {self.cpus_per_worker}")
        if self.zero_stage not in (2, 3):
            raise ValueError(f"zero_stage: DeepSpeed ZeRO stage must be 2 or 3, got {self.zero_stage}")
        if self.strategy is not Strategy.DEEPSPEED:
            if self.cpu_offload:
                raise ValueError("cpu_offload: optimizer offload needs strategy='deepspeed'")
            if self.deepspeed_config is not None:
                raise ValueError("deepspeed_config: only used with strategy='deepspeed'")
        elif self.cpu_offload and not self.use_gpu:
            raise ValueError("cpu_offload: offloading to the CPU only makes sense when training on GPUs (use_gpu)")
        if self.deepspeed_config is not None:
            self._check_deepspeed_config(dict(self.deepspeed_config))

    def _coerce_enum(self, name: str) -> None:
        enum_type = {"strategy": Strategy, "weighting": Weighting, "prompt_format": PromptFormat}[name]
        value = getattr(self, name)
        try:
            object.__setattr__(self, name, enum_type(value))
        except ValueError:
            choices = ", ".join(repr(member.value) for member in enum_type)
            raise ValueError(f"{name}: {value!r} is not one of {choices}") from None

    def _check_deepspeed_config(self, extra: dict[str, Any]) -> None:
        if "optimizer" in extra:
            raise ValueError(
                "deepspeed_config: drop 'optimizer'; the learner passes a torch AdamW (a DeepSpeed-config optimizer "
                "JIT-compiles fused_adam for minutes and ignores learning_rate here)"
            )
        if "scheduler" in extra:
            raise ValueError("deepspeed_config: drop 'scheduler'; set lr_scheduler / warmup_ratio instead")
        expected = {
            "train_micro_batch_size_per_gpu": self.per_device_batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
        }
        for key in _DEEPSPEED_DERIVED_KEYS:
            if key in extra and extra[key] != expected[key]:
                raise ValueError(
                    f"deepspeed_config: {key}={extra[key]!r} contradicts the training config ({expected[key]!r}); "
                    f"remove it from deepspeed_config"
                )
        if "train_batch_size" in extra:
            raise ValueError(
                "deepspeed_config: drop 'train_batch_size'; it follows from batch size x accumulation x workers"
            )
        stage = extra.get("zero_optimization", {}).get("stage", self.zero_stage)
        if stage != self.zero_stage:
            raise ValueError(
                f"deepspeed_config: zero_optimization.stage={stage} contradicts zero_stage={self.zero_stage}"
            )
        if extra.get("fp16", {}).get("enabled") and self.bf16:
            raise ValueError("deepspeed_config: fp16 and bf16 cannot both be enabled")
        if extra.get("fp16", {}).get("enabled") and not self.use_gpu:
            raise ValueError("deepspeed_config: fp16 needs GPUs; on CPU train in fp32 or bf16")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view of the config (for manifests)."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, enum.Enum):
                value = value.value
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[name] = value
        return out
