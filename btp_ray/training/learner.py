"""The learner: fine-tunes the target model (LoRA or full) on one batch of replay samples and writes the iteration's
adapter folder + manifest. It runs in one plain process, or as one rank of a torch.distributed job (DDP or DeepSpeed)
when a process group exists, which is how the Ray Train wrapper uses it.

A ``Learner`` kept alive across iterations loads the base model once (``prepare``, callable before the batch is
ready); with LoRA in a single process the base is restored after each iteration (the adapter is unloaded), so the
next iteration starts from ``base_model`` plus its ``init_adapter``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from btp_ray.training.config import LearnerError, Strategy, TrainingConfig, Weighting
from btp_ray.training.dataset import IGNORE_INDEX, SFTDataset, TrainingExample, build_sft_dataset_for, collate
from btp_ray.training.distributed import (
    TrainEngine,
    gather_floats,
    partition_numel,
    process_group_ready,
    rank_and_world,
    single_process_group,
    zero3_loading_config,
)
from btp_ray.training.modeling import (
    apply_lora,
    choose_target_modules,
    load_model,
    load_tokenizer,
    resolve_base_model_path,
)
from btp_ray.training.results import AdapterManifest, StepMetrics, TrainResult

logger = logging.getLogger(__name__)

StepCallback = Callable[[StepMetrics], None]


def adapter_name_for(iteration: int, data_hash: str) -> str:
    """A name unique per iteration and batch, for samplers to serve the adapter under."""
    return f"btp-iter{iteration}-{data_hash[:8]}"


class Learner:
    """Fine-tunes ``config.base_model`` on ``TrainingExample`` batches, one iteration per ``train`` call."""

    def __init__(self, config: TrainingConfig, *, device: Any = None) -> None:
        import torch

        self.config = config
        self.model_path = resolve_base_model_path(config.base_model)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self._tokenizer: Any = None
        self._base_model: Any = None
        self._zero3_config: Any = None  # transformers' HfDeepSpeedConfig, alive while the model is partitioned

    @property
    def partitioned_loading(self) -> bool:
        """ZeRO-3: the base model is built already partitioned across the ranks (needs the process group)."""
        return self.config.strategy is Strategy.DEEPSPEED and self.config.zero_stage == 3

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.model_path)
        return self._tokenizer

    def prepare(self) -> None:
        """Load tokenizer and base model now (e.g. while samplers still run), off the training's critical path."""
        _ = self.tokenizer
        if not self.partitioned_loading or process_group_ready():
            self._load_base()

    def build_dataset(self, examples: Sequence[TrainingExample]) -> SFTDataset:
        return build_sft_dataset_for(self.config, examples, self.tokenizer)

    def _load_base(self) -> Any:
        if self._base_model is None:
            import torch

            dtype = torch.bfloat16 if self.config.bf16 and self.config.strategy is Strategy.DEEPSPEED else None
            if self.partitioned_loading and self._zero3_config is None:
                self._zero3_config = zero3_loading_config(self.config, rank_and_world()[1])
            self._base_model = load_model(self.model_path, dtype=dtype)
        return self._base_model

    def total_steps(self, num_features: int, world_size: int) -> int:
        """Optimizer steps: ``max_steps`` if set, else enough to cover ``num_epochs`` passes over each rank's shard."""
        if self.config.max_steps > 0:
            return self.config.max_steps
        micro_per_epoch = math.ceil(math.ceil(num_features / world_size) / self.config.per_device_batch_size)
        return max(1, math.ceil(self.config.num_epochs * micro_per_epoch / self.config.gradient_accumulation_steps))

    def _micro_batches(self, dataset: SFTDataset, rank: int, world_size: int) -> Iterator[tuple[float, dict[str, Any]]]:
        """Endless (epoch, micro-batch) stream: each epoch a seeded shuffle, padded so every rank gets as many."""
        import torch

        n = len(dataset)
        batch_size = self.config.per_device_batch_size
        per_rank = math.ceil(n / world_size)
        micro_per_epoch = math.ceil(per_rank / batch_size)
        for epoch in itertools.count():
            generator = torch.Generator().manual_seed(self.config.seed + epoch)
            order = torch.randperm(n, generator=generator).tolist()
            order = (order * math.ceil(per_rank * world_size / n))[: per_rank * world_size]
            shard = order[rank::world_size]
            for index in range(micro_per_epoch):
                chosen = shard[index * batch_size : (index + 1) * batch_size]
                batch = collate([dataset.features[i] for i in chosen], dataset.pad_token_id)
                yield epoch + (index + 1) / micro_per_epoch, batch

    def _loss(self, engine: TrainEngine, batch: dict[str, Any], mean_weight: float) -> Any:
        import torch
        import torch.nn.functional as F

        use_autocast = self.config.bf16 and engine.strategy is not Strategy.DEEPSPEED
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_autocast):
            logits = engine.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        token_loss = F.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none"
        )
        mask = (labels != IGNORE_INDEX).float()
        if self.config.weighting is Weighting.NONE:
            return (token_loss * mask).sum() / mask.sum().clamp(min=1.0)
        per_example = (token_loss * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return (per_example * batch["weights"] / mean_weight).mean()

    def train(
        self,
        examples: Sequence[TrainingExample] | SFTDataset,
        *,
        output_dir: str | Path,
        iteration: int = 0,
        init_adapter: str | Path | None = None,
        on_step: StepCallback | None = None,
        started_at: float | None = None,
    ) -> TrainResult:
        """Fine-tune on ``examples`` (or a dataset built from them) and save the result to ``output_dir`` (on rank 0).

        ``init_adapter`` continues from a previous iteration's LoRA adapter. ``on_step`` is called on every rank
        after every optimizer step. ``started_at`` (``time.time()``) is when the caller began, for the overhead.
        """
        started_at = time.time() if started_at is None else started_at
        dataset = examples if isinstance(examples, SFTDataset) else self.build_dataset(examples)
        if self.config.weighting is Weighting.PRIORITY and dataset.mean_weight <= 0:
            raise LearnerError("weighting='priority' but every example has weight 0: nothing to learn")
        if self.config.strategy is Strategy.DEEPSPEED:
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            with single_process_group(backend):
                return self._train(dataset, Path(output_dir), iteration, init_adapter, on_step, started_at)
        return self._train(dataset, Path(output_dir), iteration, init_adapter, on_step, started_at)

    def _train(
        self,
        dataset: SFTDataset,
        output_dir: Path,
        iteration: int,
        init_adapter: str | Path | None,
        on_step: StepCallback | None,
        started_at: float,
    ) -> TrainResult:
        import torch
        from transformers import get_scheduler

        rank, world_size = rank_and_world()
        torch.manual_seed(self.config.seed)
        base = self._load_base()
        local_numel, total_numel = partition_numel(base)
        shares = gather_floats(local_numel / total_numel)
        targets: tuple[str, ...] | None = None
        if self.config.use_lora:
            targets = choose_target_modules(base, self.config.target_modules)
        elif init_adapter is not None:
            raise LearnerError("init_adapter is a LoRA adapter but use_lora=False: set base_model instead")
        # From here on the base model is modified (LoRA layers injected, weights trained): a failure drops it.
        self._base_model = None
        if self.config.use_lora:
            model = apply_lora(base, self.config, targets, init_adapter)
        else:
            model = base
            model.requires_grad_(True)
        model.to(self.device)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=self.config.learning_rate, weight_decay=self.config.weight_decay)
        total_steps = self.total_steps(len(dataset), world_size)
        scheduler = get_scheduler(
            self.config.lr_scheduler,
            optimizer,
            num_warmup_steps=int(self.config.warmup_ratio * total_steps),
            num_training_steps=total_steps,
        )
        engine = TrainEngine.create(self.config, model, optimizer, scheduler, self.device, world_size)
        engine.train()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        metrics = self._loop(engine, dataset, rank, world_size, total_steps, on_step)
        train_seconds = time.time() - metrics[0].started_at
        overhead = metrics[0].started_at - started_at
        manifest = AdapterManifest(
            adapter_name=adapter_name_for(iteration, dataset.data_hash),
            adapter_kind="lora" if self.config.use_lora else "full",
            base_model=self.config.base_model,
            base_model_path=self.model_path,
            iteration=iteration,
            data_hash=dataset.data_hash,
            num_examples=len(dataset),
            num_truncated=dataset.num_truncated,
            num_skipped=dataset.num_skipped,
            prompt_format=dataset.prompt_format.value,
            strategy=_strategy_label(engine),
            world_size=world_size,
            target_modules=targets,
            metrics={
                **_summary(metrics, train_seconds, overhead),
                "peak_memory_mb": _peak_memory_mb(self.device),
                "base_params_total": float(total_numel),
                "base_params_share_max": max(shares),  # largest fraction of the base model any rank held
                "base_params_share_min": min(shares),
            },
            config=self.config.to_dict(),
            created_at=time.time(),
        )
        self._save(engine, output_dir, manifest, rank)
        self._release(engine, world_size)
        return TrainResult(
            adapter_dir=output_dir,
            manifest=manifest,
            step_metrics=tuple(metrics),
            overhead_seconds=overhead,
            train_seconds=train_seconds,
            total_seconds=time.time() - started_at,
        )

    def _loop(
        self,
        engine: TrainEngine,
        dataset: SFTDataset,
        rank: int,
        world_size: int,
        total_steps: int,
        on_step: StepCallback | None,
    ) -> list[StepMetrics]:
        import torch
        import torch.distributed as dist

        accumulation = self.config.gradient_accumulation_steps
        stream = self._micro_batches(dataset, rank, world_size)
        metrics: list[StepMetrics] = []
        loop_start = time.time()
        for step in range(1, total_steps + 1):
            step_start = time.time()
            learning_rate = engine.current_lr()
            losses: list[float] = []
            tokens = 0
            for micro in range(accumulation):
                epoch, batch = next(stream)
                batch = {key: value.to(self.device) for key, value in batch.items()}
                is_boundary = micro == accumulation - 1
                with engine.sync_context(is_boundary):
                    loss = self._loss(engine, batch, dataset.mean_weight)
                    engine.backward(loss)
                engine.micro_step(is_boundary)
                losses.append(float(loss.detach()))
                tokens += int(batch["attention_mask"].sum())
            totals = torch.tensor([sum(losses) / len(losses), float(tokens)], dtype=torch.float64)
            if world_size > 1:
                dist.all_reduce(totals)
            step_seconds = time.time() - step_start
            record = StepMetrics(
                step=step,
                epoch=round(epoch, 4),
                loss=float(totals[0]) / world_size,
                learning_rate=learning_rate,
                tokens=int(totals[1]),
                tokens_per_second=float(totals[1]) / step_seconds if step_seconds > 0 else 0.0,
                step_seconds=step_seconds,
                elapsed_seconds=time.time() - loop_start,
                started_at=step_start,
            )
            if not math.isfinite(record.loss):
                raise LearnerError(f"training diverged at step {step}: loss is {record.loss}")
            metrics.append(record)
            if rank == 0:
                logger.info(
                    "step %d/%d loss %.4f lr %.2e %.0f tok/s",
                    step,
                    total_steps,
                    record.loss,
                    learning_rate,
                    record.tokens_per_second,
                )
            if on_step is not None:
                on_step(record)
        return metrics

    def _save(self, engine: TrainEngine, output_dir: Path, manifest: AdapterManifest, rank: int) -> None:
        """LoRA: only the adapter's (gathered) weights. Full fine-tune: every weight; under ZeRO-3 gathered layer by
        layer onto rank 0 (DeepSpeed's 16-bit consolidation), never the optimizer states."""
        full_state = None if self.config.use_lora else engine.consolidated_state_dict()
        gather = engine.gathered_trainable() if self.config.use_lora else contextlib.nullcontext()
        with gather:
            if rank == 0:
                output_dir.mkdir(parents=True, exist_ok=True)
                engine.module.save_pretrained(str(output_dir), safe_serialization=True, state_dict=full_state)
                if not self.config.use_lora:
                    self.tokenizer.save_pretrained(str(output_dir))
                manifest.write(output_dir)
        if rank == 0:
            logger.info("saved %s adapter %s to %s", manifest.adapter_kind, manifest.adapter_name, output_dir)

    def _release(self, engine: TrainEngine, world_size: int) -> None:
        """Keep the base model for the next iteration only when training left it as loaded (one-process LoRA)."""
        if self.config.use_lora and world_size == 1 and engine.strategy is None:
            self._base_model = engine.module.unload()
            self._base_model.requires_grad_(False)


def _peak_memory_mb(device: Any) -> float:
    """Peak accelerator memory allocated during training on a GPU; the process's peak RSS on a CPU."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _strategy_label(engine: TrainEngine) -> str:
    if engine.strategy is Strategy.DEEPSPEED:
        return f"deepspeed-zero{engine.zero_stage}"
    return engine.strategy.value if engine.strategy is not None else "single-process"


def _summary(metrics: Sequence[StepMetrics], train_seconds: float, overhead: float) -> dict[str, float]:
    tokens = sum(metric.tokens for metric in metrics)
    return {
        "steps": float(len(metrics)),
        "first_loss": metrics[0].loss,
        "final_loss": metrics[-1].loss,
        "tokens": float(tokens),
        "tokens_per_second": tokens / train_seconds if train_seconds > 0 else 0.0,
        "train_seconds": train_seconds,
        "overhead_seconds": overhead,
    }
