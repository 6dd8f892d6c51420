"""The parallel strategies the learner trains with: nothing (one process), torch DDP, or DeepSpeed ZeRO-2/3.

``TrainEngine`` gives the training loop one interface (forward, backward, step, save) over the three. DeepSpeed gets
a torch optimizer and scheduler, never a config one (that JIT-compiles ``fused_adam`` for minutes). DeepSpeed on CPU
JIT-builds its shared-memory comm op on first use (~2.5 min); it is cached under ``TORCH_EXTENSIONS_DIR``, which
``ensure_torch_extensions_dir`` points at the btp-ray cache (``prebuild_deepspeed_ops`` builds it ahead, for CI).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from btp_ray.training.config import LearnerError, Strategy, TrainingConfig, default_torch_extensions_dir

logger = logging.getLogger(__name__)


def ensure_torch_extensions_dir() -> Path:
    """Set ``TORCH_EXTENSIONS_DIR`` (if unset) to the btp-ray cache, so DeepSpeed's JIT ops are built once."""
    path = default_torch_extensions_dir()
    path.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(path))
    return Path(os.environ["TORCH_EXTENSIONS_DIR"])


def prebuild_deepspeed_ops() -> Path:
    """Build (or find cached) DeepSpeed's CPU shared-memory comm op; returns the extensions directory."""
    directory = ensure_torch_extensions_dir()
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None:
        builder.load()
    return directory


def rank_and_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def single_process_group(backend: str) -> Iterator[None]:
    """A world of one for DeepSpeed in a plain process; a group that already exists is used as is."""
    import torch.distributed as dist

    if dist.is_initialized():
        yield
        return
    # DeepSpeed reads the launcher's variables even when the group exists; a world of one sets them for the call.
    launcher_env = {"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}
    previous = {key: os.environ.get(key) for key in launcher_env}
    os.environ.update(launcher_env)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def deepspeed_config(config: TrainingConfig, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config derived from ``config``, with ``config.deepspeed_config`` merged over it."""
    zero: dict[str, Any] = {"stage": config.zero_stage, "overlap_comm": False}
    if config.cpu_offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    derived: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": config.per_device_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "train_batch_size": config.per_device_batch_size * config.gradient_accumulation_steps * world_size,
        "gradient_clipping": config.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": config.bf16},
        # ZeRO-Offload with a torch optimizer: DeepSpeed's CPUAdam would be another JIT build.
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    for key, value in (config.deepspeed_config or {}).items():
        if isinstance(value, dict) and isinstance(derived.get(key), dict):
            derived[key] = {**derived[key], **value}
        else:
            derived[key] = value
    return derived


def process_group_ready() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def zero3_loading_config(config: TrainingConfig, world_size: int) -> Any:
    """transformers' ZeRO-3 switch: while the returned ``HfDeepSpeedConfig`` is alive, ``from_pretrained`` builds the
    model inside ``deepspeed.zero.Init``, so each rank allocates only its partition of every weight and loads the
    checkpoint into it; no rank ever holds the whole model. Keep a reference until training ends."""
    from transformers.integrations import HfDeepSpeedConfig

    ensure_torch_extensions_dir()
    loading = deepspeed_config(config, world_size)
    # Parsed before DeepSpeed's comm knows the world size (it would check the global batch against a world of 1);
    # only the ZeRO and dtype settings matter for loading.
    loading.pop("train_batch_size")
    return HfDeepSpeedConfig(loading)


def partition_numel(model: Any) -> tuple[int, int]:
    """(elements this rank holds, elements of the whole model): ZeRO-3 parameters count their local partition
    (``ds_tensor``) against their full size (``ds_numel``); ordinary parameters count whole on both sides."""
    local = total = 0
    for param in model.parameters():
        if hasattr(param, "ds_tensor"):
            local += param.ds_tensor.numel()
            total += param.ds_numel
        else:
            local += param.numel()
            total += param.numel()
    return local, total


def gather_floats(value: float) -> list[float]:
    """``value`` from every rank (a list of one outside a process group)."""
    if not process_group_ready():
        return [value]
    import torch
    import torch.distributed as dist

    values = [torch.zeros(1, dtype=torch.float64) for _ in range(dist.get_world_size())]
    dist.all_gather(values, torch.tensor([value], dtype=torch.float64))
    return [float(v) for v in values]


@dataclass
class TrainEngine:
    """The model as the loop drives it. ``module`` is the unwrapped (PEFT or plain) model."""

    strategy: Strategy | None  # None: one process, no wrapper
    model: Any  # what forward is called on (DDP wrapper, DeepSpeed engine or the model)
    module: Any
    optimizer: Any
    scheduler: Any
    max_grad_norm: float
    accumulation_steps: int
    zero_stage: int | None = None

    @classmethod
    def create(
        cls, config: TrainingConfig, model: Any, optimizer: Any, scheduler: Any, device: Any, world_size: int
    ) -> TrainEngine:
        if config.strategy is Strategy.DEEPSPEED:
            try:
                import deepspeed
            except ImportError as exc:
                raise LearnerError("strategy='deepspeed' needs the deepspeed package (pip install deepspeed)") from exc
            ensure_torch_extensions_dir()
            try:
                engine, ds_optimizer, _, ds_scheduler = deepspeed.initialize(
                    model=model,
                    optimizer=optimizer,
                    lr_scheduler=scheduler,
                    config=deepspeed_config(config, world_size),
                    dist_init_required=False,
                )
            except (AssertionError, ValueError) as exc:  # DeepSpeed reports config conflicts by assert
                raise LearnerError(f"DeepSpeed refused the configuration: {exc}") from exc
            return cls(
                Strategy.DEEPSPEED,
                engine,
                engine.module,
                ds_optimizer,
                ds_scheduler,
                config.max_grad_norm,
                config.gradient_accumulation_steps,
                zero_stage=config.zero_stage,
            )
        if world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [device.index] if device.type == "cuda" else None
            wrapped = DistributedDataParallel(model, device_ids=device_ids)
            return cls(
                Strategy.DDP,
                wrapped,
                model,
                optimizer,
                scheduler,
                config.max_grad_norm,
                config.gradient_accumulation_steps,
            )
        return cls(None, model, model, optimizer, scheduler, config.max_grad_norm, config.gradient_accumulation_steps)

    def sync_context(self, is_boundary: bool) -> contextlib.AbstractContextManager[Any]:
        """DDP skips the gradient all-reduce on micro-batches inside an accumulation window."""
        if self.strategy is Strategy.DDP and not is_boundary:
            return self.model.no_sync()
        return contextlib.nullcontext()

    def backward(self, loss: Any) -> None:
        if self.strategy is Strategy.DEEPSPEED:
            self.model.backward(loss)  # scales by 1/accumulation itself
        else:
            (loss / self.accumulation_steps).backward()

    def micro_step(self, is_boundary: bool) -> None:
        """After each micro-batch: DeepSpeed counts them itself; others step the optimizer at the boundary."""
        if self.strategy is Strategy.DEEPSPEED:
            self.model.step()
            return
        if not is_boundary:
            return
        import torch

        if self.max_grad_norm > 0:
            params = [p for p in self.module.parameters() if p.requires_grad]
            torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def current_lr(self) -> float:
        if self.strategy is Strategy.DEEPSPEED:
            return float(self.model.get_lr()[0])
        return float(self.optimizer.param_groups[0]["lr"])

    def train(self) -> None:
        self.model.train()

    @property
    def partitioned(self) -> bool:
        return self.strategy is Strategy.DEEPSPEED and self.zero_stage == 3

    def consolidated_state_dict(self) -> dict[str, Any] | None:
        """Under ZeRO-3 the full weights gathered layer by layer onto rank 0 (a collective: every rank calls it;
        other ranks get None); otherwise None (the module's own state dict is whole)."""
        if not self.partitioned:
            return None
        return self.model._zero3_consolidated_16bit_state_dict() or None

    @contextlib.contextmanager
    def gathered_trainable(self) -> Iterator[None]:
        """Under ZeRO-3 every rank must join in gathering the partitioned trainable parameters before a save."""
        if self.strategy is Strategy.DEEPSPEED and self.zero_stage == 3:
            import deepspeed

            params = [p for p in self.module.parameters() if p.requires_grad]
            with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                yield
        else:
            yield
