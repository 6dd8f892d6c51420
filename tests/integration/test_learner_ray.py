"""The learner under Ray Train: LoRA fine-tuning in a 2-worker ``TorchTrainer`` on CPU (DDP; DeepSpeed ZeRO-2 and
the real SmolLM2-135M are ``slow``). Checks the loss goes down, the adapter lands in the run's storage path with its
manifest, loading it raises the log-prob of the training programs, and an HF sampler serving it reports its name on
the candidates it generates. Bad input is refused on the driver before any worker starts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from btp_ray.data.types import Problem, TestCase
from btp_ray.models import embedded_model_dir
from btp_ray.training import (
    AdapterManifest,
    LearnerError,
    RayLearner,
    TrainingConfig,
    TrainingExample,
    train_with_ray,
)
from btp_ray.training.config import default_torch_extensions_dir
from btp_ray.training.modeling import program_logprobs
from btp_ray.training.tiny_model import make_tiny_llama
from tests.learner_data import EXAMPLES, lora_config


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def _config(model: Path | str, storage: Path, **overrides) -> TrainingConfig:
    settings = {"max_steps": 4, "per_device_batch_size": 1, "num_workers": 2, "storage_path": str(storage)}
    return lora_config(model, **(settings | overrides))


def _check_trained(result, model_path: Path, storage: Path, strategy: str) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    assert [m.step for m in result.step_metrics] == [1, 2, 3, 4]
    assert result.final_loss < result.first_loss
    assert result.overhead_seconds > 0
    assert result.adapter_dir.is_relative_to(storage)  # persisted through Ray Train checkpointing
    assert {"adapter_config.json", "adapter_model.safetensors", "manifest.json"} <= {
        p.name for p in result.adapter_dir.iterdir()
    }
    manifest = AdapterManifest.read(result.adapter_dir)
    assert manifest.strategy == strategy
    assert manifest.world_size == 2
    assert manifest.iteration == 5
    learner = RayLearner(_config(model_path, storage))
    dataset = learner.build_dataset(EXAMPLES)
    base = AutoModelForCausalLM.from_pretrained(model_path)
    before = program_logprobs(base, dataset.features, dataset.pad_token_id)
    tuned = PeftModel.from_pretrained(base, str(result.adapter_dir), adapter_name=manifest.adapter_name)
    after = program_logprobs(tuned, dataset.features, dataset.pad_token_id)
    assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)


def test_ddp_two_workers_train_save_and_hand_off(ray_cluster, tiny_model, tmp_path):
    from btp_ray.sampling.config import SamplerConfig
    from btp_ray.sampling.hf import HFSampler
    from btp_ray.sampling.types import GenerationParams

    result = train_with_ray(_config(tiny_model, tmp_path), EXAMPLES, iteration=5)
    _check_trained(result, tiny_model, tmp_path, "ddp")

    sampler = HFSampler(SamplerConfig(model=str(tiny_model), backend="hf", device="cpu"))
    name = result.manifest.adapter_name
    sampler.load_adapter(str(result.adapter_dir), name)
    assert sampler.identity.adapter == name
    problem = Problem(task_id="t0", prompt=EXAMPLES[0].prompt, tests=(TestCase.assertion("assert True"),))
    candidates = sampler.generate([problem], GenerationParams(strategy="greedy", num_candidates=1, max_new_tokens=4))
    assert candidates[0][0].sampler.adapter == name


@pytest.mark.slow
def test_deepspeed_zero2_two_workers(ray_cluster, tiny_model, tmp_path):
    """ZeRO-2 over gloo; the first run on a machine JIT-builds DeepSpeed's shm comm op (~2.5 min, then cached)."""
    result = train_with_ray(_config(tiny_model, tmp_path, strategy="deepspeed", zero_stage=2), EXAMPLES, iteration=5)
    _check_trained(result, tiny_model, tmp_path, "deepspeed-zero2")
    assert Path(os.environ.get("TORCH_EXTENSIONS_DIR", default_torch_extensions_dir())).is_dir()


@pytest.mark.slow
def test_ddp_two_workers_on_the_embedded_smollm2(ray_cluster, tmp_path):
    model = embedded_model_dir()
    config = _config(model, tmp_path, learning_rate=2e-3, max_seq_len=256)
    result = train_with_ray(config, EXAMPLES, iteration=5, output_dir=tmp_path / "copy")
    assert result.adapter_dir == tmp_path / "copy"
    assert result.final_loss < result.first_loss
    assert AdapterManifest.read(result.adapter_dir).target_modules == ("q_proj", "k_proj", "v_proj", "o_proj")


def test_bad_input_is_refused_before_workers_start(tiny_model, tmp_path):
    """No Ray cluster is needed: these fail on the driver."""
    with pytest.raises(LearnerError, match=r"\['gate'\]"):
        RayLearner(_config(tiny_model, tmp_path, target_modules=("gate",)))
    with pytest.raises(LearnerError, match="not found"):
        RayLearner(_config("/nonexistent/btp/model", tmp_path))
    with pytest.raises(LearnerError, match="empty training batch"):
        train_with_ray(_config(tiny_model, tmp_path), [])
    with pytest.raises(LearnerError, match="only prompts"):
        train_with_ray(_config(tiny_model, tmp_path), [TrainingExample(prompt="Write add(a, b).")])
    with pytest.raises(LearnerError, match="adapter_config.json"):
        train_with_ray(_config(tiny_model, tmp_path), EXAMPLES, init_adapter=tmp_path)
