"""The learner on a CUDA GPU (skipped without one): bf16 LoRA fine-tuning of a random-weight Llama in one process,
under DeepSpeed ZeRO-2 (NCCL, one rank) and in a one-GPU Ray Train TorchTrainer. The loss goes down, the adapter is
saved, and the reported peak memory is the GPU's."""

from __future__ import annotations

import pytest

from btp_ray.training import AdapterManifest, Learner, TrainingConfig
from tests.learner_data import EXAMPLES, lora_config

pytestmark = pytest.mark.gpu


def _config(model, **overrides) -> TrainingConfig:
    return lora_config(model, num_workers=1, use_gpu=True, bf16=True, **overrides)


def _check(result, strategy: str) -> None:
    assert len(result.step_metrics) == 6
    assert result.final_loss < result.first_loss
    manifest = AdapterManifest.read(result.adapter_dir)
    assert manifest.strategy == strategy
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    # GPU memory in MB: more than the LoRA weights alone, far less than the card (an RSS would also be > 0).
    assert 1 < manifest.metrics["peak_memory_mb"] < 8 * 1024


@pytest.mark.parametrize("strategy, label", [("ddp", "single-process"), ("deepspeed", "deepspeed-zero2")])
def test_lora_on_one_gpu_in_process(gpu_llama, tmp_path, strategy, label):
    import torch

    torch.cuda.reset_peak_memory_stats()
    result = Learner(_config(gpu_llama, strategy=strategy), device="cuda").train(EXAMPLES, output_dir=tmp_path / "a")
    _check(result, label)
    assert torch.cuda.max_memory_allocated() > 0


def test_lora_in_a_one_gpu_torch_trainer(gpu_llama, tmp_path):
    import ray

    from btp_ray.pipeline.services import shutdown_ray
    from btp_ray.training import train_with_ray

    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        config = _config(gpu_llama, strategy="deepspeed", storage_path=str(tmp_path / "ray"))
        result = train_with_ray(config, EXAMPLES)
    finally:
        shutdown_ray(timeout_s=20)
    _check(result, "deepspeed-zero2")
