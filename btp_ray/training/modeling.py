"""Loading the base model and tokenizer for training, choosing and checking LoRA target modules per architecture,
wrapping the model with PEFT, and scoring programs by log-probability (to see what a fine-tune changed)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from btp_ray.models import ModelKind, UnknownModelError, local_model_path, resolve_model
from btp_ray.training.config import LearnerError, TrainingConfig
from btp_ray.training.dataset import IGNORE_INDEX, SFTFeature, collate

logger = logging.getLogger(__name__)

# LoRA on all attention projections: the projections exist under these names in each architecture's attention block.
LORA_TARGETS_BY_ARCHITECTURE: dict[str, tuple[str, ...]] = {
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mistral": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mixtral": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "qwen2": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "qwen3": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "gemma": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "gemma2": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "starcoder2": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "phi3": ("qkv_proj", "o_proj"),
    "deepseek_v2": ("q_proj", "kv_b_proj", "o_proj"),
    "gpt2": ("c_attn", "c_proj"),
    "gpt_bigcode": ("c_attn", "c_proj"),
    "gpt_neo": ("q_proj", "k_proj", "v_proj", "out_proj"),
    "gpt_neox": ("query_key_value", "dense"),
}


def resolve_base_model_path(base_model: str) -> str:
    """The directory or hub id to load ``base_model`` from; ``LearnerError`` when it is missing or an API model."""
    try:
        spec = resolve_model(base_model)
    except UnknownModelError as exc:
        raise LearnerError(f"base model {base_model!r} not found: {exc}") from exc
    if spec.kind is not ModelKind.LOCAL:
        raise LearnerError(f"base model {base_model!r} is an API model ({spec.kind.value}); only local models train")
    try:
        path = local_model_path(spec)
    except FileNotFoundError as exc:
        raise LearnerError(f"base model {base_model!r} is not available: {exc}") from exc
    if Path(path).is_absolute() and not (Path(path) / "config.json").is_file():
        raise LearnerError(f"base model {base_model!r}: {path} has no config.json (not a transformers model folder)")
    return path


def load_tokenizer(model_path: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_path)
    except OSError as exc:
        raise LearnerError(f"base model {model_path!r}: cannot load its tokenizer offline ({exc})") from exc


def load_model_config(model_path: str) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_path)
    except (OSError, ValueError) as exc:
        raise LearnerError(f"base model {model_path!r}: cannot load its config offline ({exc})") from exc


def load_model(model_path: str, *, dtype: Any = None) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype or torch.float32)
    except OSError as exc:
        raise LearnerError(f"base model {model_path!r}: cannot load its weights offline ({exc})") from exc


def module_skeleton(model_config: Any) -> Any:
    """The model built on the meta device: its module tree without allocating weights."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(model_config)


def _adaptable_module_names(model: Any) -> list[str]:
    import torch
    from transformers.pytorch_utils import Conv1D

    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear | torch.nn.Embedding | Conv1D)
    ]


def choose_target_modules(model: Any, requested: Sequence[str] | None) -> tuple[str, ...]:
    """The LoRA targets: ``requested`` checked against the model, or the architecture's defaults.

    A requested name matches a module whose dotted name equals it or ends with ``.name`` (as PEFT matches);
    unknown names raise ``LearnerError`` naming them and listing the layer names the model has.
    """
    names = _adaptable_module_names(model)
    model_type = getattr(model.config, "model_type", "")
    if requested is None:
        targets = LORA_TARGETS_BY_ARCHITECTURE.get(model_type)
        if targets is None:
            from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

            fallback = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
            if not fallback:
                raise LearnerError(
                    f"no default LoRA target modules for architecture {model_type!r}: set target_modules, e.g. from "
                    f"{_leaf_names(names)}"
                )
            targets = tuple(fallback)
    else:
        targets = tuple(requested)
    missing = [target for target in targets if not any(n == target or n.endswith("." + target) for n in names)]
    if missing:
        raise LearnerError(
            f"LoRA target modules {missing} do not exist in {model_type or 'the model'}; its adaptable layers are "
            f"{_leaf_names(names)}"
        )
    return targets


def _leaf_names(names: Iterable[str]) -> list[str]:
    return sorted({name.rsplit(".", 1)[-1] for name in names})


def apply_lora(model: Any, config: TrainingConfig, targets: Sequence[str], init_adapter: str | Path | None) -> Any:
    """Wrap ``model`` with a trainable LoRA adapter: a fresh one, or the previous iteration's to continue from."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if init_adapter is not None:
        if not (Path(init_adapter) / "adapter_config.json").is_file():
            raise LearnerError(f"init_adapter {init_adapter}: no adapter_config.json there")
        return PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True)
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(targets),
        task_type="CAUSAL_LM",
        bias="none",
    )
    return get_peft_model(model, lora)


def program_logprobs(model: Any, features: Sequence[SFTFeature], pad_token_id: int) -> list[float]:
    """Sum of log-probabilities of each feature's target (unmasked) tokens under ``model``, one per feature."""
    import torch

    model.eval()
    scores: list[float] = []
    with torch.no_grad():
        for feature in features:
            batch = collate([feature], pad_token_id)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
            labels = batch["labels"][:, 1:]
            logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
            mask = labels != IGNORE_INDEX
            picked = logprobs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            scores.append(float((picked * mask).sum()))
    return scores
