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
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from btp_ray.training.config import LearnerError, Strategy, TrainingConfig
from btp_ray.training.dataset import SFTDataset, TrainingExample, build_sft_dataset_for
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
    import ray
    import ray.train
    import ray.train.torch

    config: TrainingConfig = loop_config["config"]
    iteration: int = loop_config["iteration"]
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device() if config.use_gpu else "cpu"

    def report_step(metrics: StepMetrics) -> None:
        ray.train.report(metrics.to_dict())

    learner = Learner(config, device=device)
    dataset = loop_config["dataset"]
    started_at = loop_config["fit_started_at"]
    if not isinstance(dataset, SFTDataset):  # started before its data: load the model while the samplers finish
        learner.prepare()
        delivered = ray.get(dataset.get.remote())
        if delivered is None:
            return None  # cancelled: the batch never came
        dataset, fed_at = delivered
        started_at = max(started_at, fed_at)  # what is left of the overhead once the data exists
    output_dir = Path(tempfile.mkdtemp(prefix="btp-adapter-"))
    try:
        result = learner.train(
            dataset,
            output_dir=output_dir,
            iteration=iteration,
            init_adapter=loop_config["init_adapter"],
            on_step=report_step,
            started_at=started_at,
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
        return build_sft_dataset_for(self.config, examples, self.tokenizer)

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
        started_at = time.time()
        dataset = examples if isinstance(examples, SFTDataset) else self.build_dataset(examples)
        return self._fit(dataset, iteration, init_adapter, output_dir, run_name, started_at)

    def start(
        self,
        *,
        iteration: int = 0,
        init_adapter: str | Path | None = None,
        output_dir: str | Path | None = None,
        run_name: str | None = None,
    ) -> PendingTraining:
        """Start the ``TorchTrainer`` now, before the batch exists: its workers start, join the process group and
        load the model while the caller is still sampling and testing. Hand the batch over with
        :meth:`PendingTraining.feed`; :meth:`PendingTraining.result` waits for the adapter."""
        import ray

        mailbox = ray.remote(_Mailbox).options(num_cpus=0).remote()
        return PendingTraining(self, mailbox, iteration, init_adapter, output_dir, run_name)

    def _fit(
        self,
        dataset: SFTDataset | Any,
        iteration: int,
        init_adapter: str | Path | None,
        output_dir: str | Path | None,
        run_name: str | None,
        started_at: float,
    ) -> TrainResult:
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer

        if init_adapter is not None and not (Path(init_adapter) / "adapter_config.json").is_file():
            raise LearnerError(f"init_adapter {init_adapter}: no adapter_config.json there")
        env_vars = {"TOKENIZERS_PARALLELISM": "false"}
        if self.config.strategy is Strategy.DEEPSPEED:
            env_vars["TORCH_EXTENSIONS_DIR"] = str(ensure_torch_extensions_dir())
        resources = {"CPU": self.config.cpus_per_worker}
        if self.config.use_gpu:
            resources["GPU"] = 1
        tag = dataset.data_hash[:8] if isinstance(dataset, SFTDataset) else "prestart"
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
                name=run_name or f"btp-train-iter{iteration:04d}-{tag}-{int(started_at)}",
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


class _Mailbox:
    """One value for Ray Train workers that started before it existed: ``get`` waits until ``put``."""

    def __init__(self) -> None:
        import asyncio

        self._ready = asyncio.Event()
        self._value: Any = None

    async def put(self, value: Any) -> None:
        self._value = value
        self._ready.set()

    async def get(self) -> Any:
        await self._ready.wait()
        return self._value


class PendingTraining:
    """A fine-tuning iteration whose workers are starting while its batch is still being made.

    ``feed`` the examples once, then ``result``; ``cancel`` if the batch will never come (the workers exit and
    nothing is saved). Fit runs on a background thread of the driver.
    """

    def __init__(
        self,
        learner: RayLearner,
        mailbox: Any,
        iteration: int,
        init_adapter: str | Path | None,
        output_dir: str | Path | None,
        run_name: str | None,
    ) -> None:
        self.learner = learner
        self.mailbox = mailbox
        self.started_at = time.time()
        self.fed_at: float | None = None
        self._result: TrainResult | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run,
            args=(iteration, init_adapter, output_dir, run_name),
            name=f"btp-learner-iter{iteration}",
            daemon=True,
        )
        self._thread.start()

    def _run(self, iteration: int, init_adapter: Any, output_dir: Any, run_name: Any) -> None:
        try:
            self._result = self.learner._fit(
                self.mailbox, iteration, init_adapter, output_dir, run_name, self.started_at
            )
        except BaseException as exc:  # handed to the caller in result()
            self._error = exc

    def feed(self, examples: Sequence[TrainingExample] | SFTDataset) -> SFTDataset:
        """Build (and check) the batch and hand it to the waiting workers. A bad batch cancels the run and raises."""
        import ray

        try:
            dataset = examples if isinstance(examples, SFTDataset) else self.learner.build_dataset(examples)
        except BaseException:
            self.cancel()
            raise
        self.fed_at = time.time()
        ray.get(self.mailbox.put.remote((dataset, self.fed_at)))
        return dataset

    def cancel(self) -> None:
        """Release the waiting workers without training (their fit ends without a checkpoint)."""
        import ray

        ray.get(self.mailbox.put.remote(None))
        self._thread.join()
        ray.kill(self.mailbox)

    def result(self, timeout: float | None = None) -> TrainResult:
        """The iteration's result once training is done; raises the learner's error if it failed."""
        import ray

        self._thread.join(timeout)
        if self._thread.is_alive():
            raise LearnerError(f"training did not finish within {timeout} s")
        ray.kill(self.mailbox)
        if self._error is not None:
            raise self._error
        assert self._result is not None  # _run sets one of the two
        return self._result


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
