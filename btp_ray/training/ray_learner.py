"""The learner under Ray Train: a ``TorchTrainer`` whose workers each run the plain ``Learner`` as one rank (DDP or
DeepSpeed over the process group Ray Train sets up), report every step's metrics to Ray Train, and hand the adapter
back through Ray Train checkpointing into the run's storage path.

What can be checked without workers is checked on the driver first (the batch, the base model, the LoRA targets on
a weightless copy of the model), so bad input fails in seconds, not after the ~45 s it takes ``fit`` to start
workers. The batch is tokenized once, here, and shipped to the workers.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from btp_ray.training.config import LearnerError, Strategy, TrainingConfig
from btp_ray.training.dataset import SFTDataset, TrainingExample, build_sft_dataset
from btp_ray.training.distributed import ensure_torch_extensions_dir
from btp_ray.training.learner import Learner
from btp_ray.training.modeling import (
    choose_target_modules,
    load_model_config,
    load_tokenizer,
    module_skeleton,
    resolve_base_model_path,
)
from btp_ray.training.results import StepMetrics, TrainResult

logger = logging.getLogger(__name__)


def _train_loop_per_worker(loop_config: dict[str, Any]) -> TrainResult | None:
    """One Ray Train worker: a ``Learner`` rank. Rank 0 saves the adapter and reports it as the run's checkpoint."""
    import ray.train
    import ray.train.torch

    config: TrainingConfig = loop_config["config"]
    iteration: int = loop_config["iteration"]
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device() if config.use_gpu else "cpu"

    def report_step(metrics: StepMetrics) -> None:
        ray.train.report(metrics.to_dict())

    output_dir = Path(tempfile.mkdtemp(prefix="btp-adapter-"))
    try:
        result = Learner(config, device=device).train(
            loop_config["dataset"],
            output_dir=output_dir,
            iteration=iteration,
            init_adapter=loop_config["init_adapter"],
            on_step=report_step,
            started_at=loop_config["fit_started_at"],
        )
        checkpoint = ray.train.Checkpoint.from_directory(str(output_dir)) if rank == 0 else None
        ray.train.report(
            {**result.manifest.metrics, "iteration": iteration},
            checkpoint=checkpoint,
            checkpoint_dir_name=f"iteration-{iteration:04d}",
        )
    finally:
        shutil.rmtree(output_dir, ignore_errors=True)
    return result if rank == 0 else None


class RayLearner:
    """Runs one fine-tuning iteration per ``train`` call as a Ray Train ``TorchTrainer`` job."""

    def __init__(self, config: TrainingConfig) -> None:
        self.config = config
        self.model_path = resolve_base_model_path(config.base_model)
        self.tokenizer = load_tokenizer(self.model_path)
        if config.use_lora:
            choose_target_modules(module_skeleton(load_model_config(self.model_path)), config.target_modules)
        if config.strategy is Strategy.DEEPSPEED:
            try:
                import deepspeed  # noqa: F401
            except ImportError as exc:
                raise LearnerError("strategy='deepspeed' needs the deepspeed package (pip install deepspeed)") from exc

    def build_dataset(self, examples: Sequence[TrainingExample]) -> SFTDataset:
        return build_sft_dataset(
            examples,
            self.tokenizer,
            max_seq_len=self.config.max_seq_len,
            prompt_format=self.config.prompt_format,
            system_prompt=self.config.system_prompt,
        )

    def train(
        self,
        examples: Sequence[TrainingExample] | SFTDataset,
        *,
        iteration: int = 0,
        init_adapter: str | Path | None = None,
        output_dir: str | Path | None = None,
        run_name: str | None = None,
    ) -> TrainResult:
        """Fine-tune on ``examples``; the adapter lands in the run's checkpoint (copied to ``output_dir`` if given).

        Raises ``LearnerError`` for bad input or when a worker fails (with the worker's error).
        """
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer

        started_at = time.time()
        dataset = examples if isinstance(examples, SFTDataset) else self.build_dataset(examples)
        if init_adapter is not None and not (Path(init_adapter) / "adapter_config.json").is_file():
            raise LearnerError(f"init_adapter {init_adapter}: no adapter_config.json there")
        env_vars = {"TOKENIZERS_PARALLELISM": "false"}
        if self.config.strategy is Strategy.DEEPSPEED:
            env_vars["TORCH_EXTENSIONS_DIR"] = str(ensure_torch_extensions_dir())
        resources = {"CPU": self.config.cpus_per_worker}
        if self.config.use_gpu:
            resources["GPU"] = 1
        trainer = TorchTrainer(
            _train_loop_per_worker,
            train_loop_config={
                "config": self.config,
                "dataset": dataset,
                "iteration": iteration,
                "init_adapter": str(init_adapter) if init_adapter is not None else None,
                "fit_started_at": started_at,
            },
            torch_config=TorchConfig(backend="nccl" if self.config.use_gpu else "gloo"),
            scaling_config=ScalingConfig(
                num_workers=self.config.num_workers, use_gpu=self.config.use_gpu, resources_per_worker=resources
            ),
            run_config=RunConfig(
                name=run_name or f"btp-train-iter{iteration:04d}-{dataset.data_hash[:8]}-{int(started_at)}",
                storage_path=self.config.storage_path,
                worker_runtime_env={"env_vars": env_vars},
            ),
        )
        try:
            fit_result = trainer.fit()
        except Exception as exc:  # Ray Train wraps worker errors in TrainingFailedError
            raise LearnerError(f"training iteration {iteration} failed: {exc}") from exc
        result: TrainResult | None = fit_result.return_value
        if result is None or fit_result.checkpoint is None:
            raise LearnerError(f"training iteration {iteration} finished without an adapter checkpoint")
        adapter_dir = Path(fit_result.checkpoint.path)
        if output_dir is not None:
            shutil.copytree(adapter_dir, output_dir, dirs_exist_ok=True)
            adapter_dir = Path(output_dir)
        logger.info(
            "iteration %d: adapter %s in %s, overhead %.1f s, %.0f tok/s",
            iteration,
            result.manifest.adapter_name,
            adapter_dir,
            result.overhead_seconds,
            result.tokens_per_second,
        )
        return dataclasses.replace(result, adapter_dir=adapter_dir, total_seconds=time.time() - started_at)


def train_with_ray(
    config: TrainingConfig,
    examples: Sequence[TrainingExample] | SFTDataset,
    *,
    iteration: int = 0,
    init_adapter: str | Path | None = None,
    output_dir: str | Path | None = None,
    run_name: str | None = None,
) -> TrainResult:
    """One fine-tuning iteration in a Ray Train ``TorchTrainer`` (needs ``ray.init`` done by the caller)."""
    return RayLearner(config).train(
        examples, iteration=iteration, init_adapter=init_adapter, output_dir=output_dir, run_name=run_name
    )
