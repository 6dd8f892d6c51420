"""ZeRO-3 partitioned loading inside a 2-worker Ray Train ``TorchTrainer`` on CPU (gloo): the base model is built
already partitioned (transformers' ``HfDeepSpeedConfig`` alive before ``from_pretrained``), so each rank holds about
half of the parameters; LoRA trains on top and only the adapter is gathered and saved; a full fine-tune saves the
whole model gathered layer by layer. Both load back in transformers and raise the training programs' log-probs.
Slow: the ``TorchTrainer`` start and DeepSpeed's first init cost minutes on 2 cores."""

from __future__ import annotations

from pathlib import Path

import pytest

from btp_ray.training import AdapterManifest, RayLearner, TrainingConfig, train_with_ray
from btp_ray.training.modeling import program_logprobs
from btp_ray.training.tiny_model import make_tiny_llama
from tests.learner_data import EXAMPLES, lora_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama-zero3"))


def _zero3(model: Path, storage: Path, **overrides) -> TrainingConfig:
    settings = {
        "max_steps": 4,
        "per_device_batch_size": 1,
        "num_workers": 2,
        "storage_path": str(storage),
        "strategy": "deepspeed",
        "zero_stage": 3,
    }
    return lora_config(model, **(settings | overrides))


def _logprobs(model, config: TrainingConfig) -> list[float]:
    dataset = RayLearner(config).build_dataset(EXAMPLES)
    return program_logprobs(model, dataset.features, dataset.pad_token_id)


def _assert_half_per_rank(result) -> None:
    metrics = result.manifest.metrics
    print({key: metrics[key] for key in ("base_params_total", "base_params_share_min", "base_params_share_max")})
    # Each of the 2 ranks holds its own partition of every weight (plus a little padding), never the whole model.
    assert 0.45 <= metrics["base_params_share_min"] <= metrics["base_params_share_max"] <= 0.55, metrics
    assert result.final_loss < result.first_loss


def test_zero3_lora_partitions_the_base_and_saves_only_the_adapter(ray_cluster, tiny_model, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = _zero3(tiny_model, tmp_path)
    result = train_with_ray(config, EXAMPLES, iteration=1)
    _assert_half_per_rank(result)
    manifest = AdapterManifest.read(result.adapter_dir)
    assert manifest.strategy == "deepspeed-zero3" and manifest.world_size == 2
    files = {p.name for p in result.adapter_dir.iterdir()}
    assert "adapter_model.safetensors" in files and "model.safetensors" not in files
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    before = _logprobs(base, config)
    tuned = PeftModel.from_pretrained(base, str(result.adapter_dir))
    after = _logprobs(tuned, config)
    assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)


def test_zero3_full_fine_tune_saves_the_gathered_model(ray_cluster, tiny_model, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    config = _zero3(tiny_model, tmp_path, use_lora=False, learning_rate=1e-3)
    result = train_with_ray(config, EXAMPLES, iteration=2)
    _assert_half_per_rank(result)
    assert result.manifest.adapter_kind == "full"
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    tuned = AutoModelForCausalLM.from_pretrained(result.adapter_dir)
    base_state, tuned_state = base.state_dict(), tuned.state_dict()
    assert base_state.keys() == tuned_state.keys()
    assert all(tuned_state[k].shape == base_state[k].shape for k in base_state)  # whole tensors, not partitions
    assert any(not torch.equal(tuned_state[k], base_state[k]) for k in base_state)
    before, after = _logprobs(base, config), _logprobs(tuned, config)
    assert sum(after) > sum(before), (before, after)
