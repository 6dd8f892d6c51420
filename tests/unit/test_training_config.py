"""TrainingConfig validation (each bad field is named) and the DeepSpeed config derived from it."""

from __future__ import annotations

import json

import pytest

from btp_ray.training import PromptFormat, Strategy, TrainingConfig, Weighting
from btp_ray.training.config import default_torch_extensions_dir
from btp_ray.training.distributed import deepspeed_config


def test_defaults_are_valid_and_strings_become_enums():
    config = TrainingConfig(base_model="smollm2-135m", strategy="deepspeed", weighting="priority", prompt_format="raw")
    assert config.strategy is Strategy.DEEPSPEED
    assert config.weighting is Weighting.PRIORITY
    assert config.prompt_format is PromptFormat.RAW
    assert TrainingConfig(base_model="m", target_modules=["q_proj"]).target_modules == ("q_proj",)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"base_model": " "}, "base_model"),
        ({"lora_r": 0}, "lora_r"),
        ({"lora_alpha": 0}, "lora_alpha"),
        ({"lora_dropout": 1.0}, "lora_dropout"),
        ({"target_modules": ()}, "target_modules"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"num_epochs": 0}, "num_epochs"),
        ({"max_steps": -1}, "max_steps"),
        ({"per_device_batch_size": 0}, "per_device_batch_size"),
        ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps"),
        ({"max_seq_len": 4}, "max_seq_len"),
        ({"warmup_ratio": 1.0}, "warmup_ratio"),
        ({"lr_scheduler": "exponential"}, "lr_scheduler"),
        ({"num_workers": 0}, "num_workers"),
        ({"cpus_per_worker": 0}, "cpus_per_worker"),
        ({"strategy": "fsdp"}, "strategy"),
        ({"zero_stage": 1}, "zero_stage"),
        ({"weighting": "rank"}, "weighting"),
        ({"prompt_format": "markdown"}, "prompt_format"),
        ({"cpu_offload": True}, "cpu_offload"),  # offload without DeepSpeed
        ({"strategy": "deepspeed", "cpu_offload": True}, "cpu_offload"),  # offload without GPUs
        ({"deepspeed_config": {"bf16": {"enabled": True}}}, "deepspeed_config"),  # DeepSpeed keys with DDP
    ],
)
def test_bad_fields_are_named(overrides, field):
    with pytest.raises(ValueError, match=field):
        TrainingConfig(**{"base_model": "smollm2-135m", **overrides})


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"optimizer": {"type": "Adam"}}, "drop 'optimizer'"),
        ({"scheduler": {"type": "WarmupLR"}}, "drop 'scheduler'"),
        ({"train_micro_batch_size_per_gpu": 8}, "contradicts"),
        ({"gradient_accumulation_steps": 4}, "contradicts"),
        ({"train_batch_size": 64}, "train_batch_size"),
        ({"zero_optimization": {"stage": 3}}, "stage=3 contradicts zero_stage=2"),
        ({"fp16": {"enabled": True}}, "fp16 needs GPUs"),
    ],
)
def test_incompatible_deepspeed_config_is_refused(extra, message):
    with pytest.raises(ValueError, match=message):
        TrainingConfig(base_model="m", strategy="deepspeed", deepspeed_config=extra)


def test_fp16_and_bf16_together_are_refused():
    with pytest.raises(ValueError, match="fp16 and bf16"):
        TrainingConfig(
            base_model="m", strategy="deepspeed", bf16=True, use_gpu=True, deepspeed_config={"fp16": {"enabled": True}}
        )


def test_deepspeed_config_is_derived_and_merged():
    config = TrainingConfig(
        base_model="m",
        strategy="deepspeed",
        zero_stage=3,
        per_device_batch_size=2,
        gradient_accumulation_steps=4,
        bf16=True,
        use_gpu=True,
        cpu_offload=True,
        deepspeed_config={"zero_optimization": {"reduce_bucket_size": 1000}, "gradient_accumulation_steps": 4},
    )
    derived = deepspeed_config(config, world_size=3)
    assert derived["train_batch_size"] == 2 * 4 * 3
    assert derived["zero_optimization"]["stage"] == 3
    assert derived["zero_optimization"]["reduce_bucket_size"] == 1000
    assert derived["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert derived["bf16"] == {"enabled": True}
    assert "optimizer" not in derived


def test_to_dict_is_json_ready():
    config = TrainingConfig(base_model="m", target_modules=("q_proj", "v_proj"), strategy="deepspeed")
    data = json.loads(json.dumps(config.to_dict()))
    assert data["strategy"] == "deepspeed"
    assert data["target_modules"] == ["q_proj", "v_proj"]


def test_torch_extensions_dir_follows_the_btp_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.setenv("BTP_CACHE_DIR", str(tmp_path))
    assert default_torch_extensions_dir() == tmp_path / "torch_extensions"
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "elsewhere"))
    assert default_torch_extensions_dir() == tmp_path / "elsewhere"
