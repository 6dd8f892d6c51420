"""The placement planner behind ``btp plan``: given the target and source models and the GPU nodes, decide how many
vLLM engines run at which tensor-parallel size, how many learner ranks train under which ZeRO stage, which GPU of
which node each one takes, where the sandboxes run, and what memory each GPU needs; or refuse, with the reason,
a plan that cannot fit. Pure arithmetic on model shapes: nothing is loaded and no hub is asked.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from btp_ray.planning.memory import GB, EngineMemory, LearnerMemory, engine_memory, learner_memory
from btp_ray.planning.shapes import ModelShape, model_shape


class PlanRefused(ValueError):
    """No placement fits; the message is one line saying why and what to change."""


class Placement(str, enum.Enum):
    AUTO = "auto"  # split when there are GPUs enough for both, else colocate
    SPLIT = "split"  # engines and learner ranks on distinct GPUs
    COLOCATE = "colocate"  # every GPU holds an engine shard and a learner rank


@dataclass(frozen=True)
class PlanRequest:
    """What to plan for. ``None`` means "choose": TP size, engine count, learner GPUs, ZeRO stage."""

    target: str
    source: str
    nodes: int
    gpus_per_node: int
    gpu_memory_gb: float = 80.0
    gpu_memory_utilization: float = 0.9
    beam_width: int = 8
    seq_len: int = 2048
    problems_per_engine: int = 8
    lora: bool = True
    lora_rank: int = 16
    zero_stage: int | None = None
    micro_batch: int = 1
    checkpointing: bool = True
    tensor_parallel_size: int | None = None
    num_engines: int | None = None
    learner_gpus: int | None = None
    placement: Placement = Placement.AUTO
    sandbox_nodes: int = 0
    sandbox_cpus_per_node: int = 32

    def __post_init__(self) -> None:
        object.__setattr__(self, "placement", Placement(self.placement))
        positive = (
            "nodes",
            "gpus_per_node",
            "beam_width",
            "seq_len",
            "problems_per_engine",
            "lora_rank",
            "micro_batch",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(self, name)}")
        if not self.gpu_memory_gb > 0:
            raise ValueError(f"--gpu-memory-gb: must be > 0, got {self.gpu_memory_gb}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"--gpu-memory-utilization: must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.zero_stage not in (None, 2, 3):
            raise ValueError(f"--zero-stage: must be 2 or 3, got {self.zero_stage}")
        for name in ("tensor_parallel_size", "num_engines", "learner_gpus"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')}: must be >= 1, got {value}")
        if self.sandbox_nodes < 0 or self.sandbox_cpus_per_node < 1:
            raise ValueError("--sandbox-nodes must be >= 0 and --sandbox-cpus-per-node >= 1")

    @property
    def usable_bytes(self) -> int:
        return int(self.gpu_memory_gb * GB * self.gpu_memory_utilization)

    @property
    def total_gpus(self) -> int:
        return self.nodes * self.gpus_per_node


@dataclass(frozen=True)
class GpuSlot:
    """What one GPU hosts and needs."""

    node: int
    gpu: int
    roles: tuple[str, ...]
    bytes_needed: int


@dataclass(frozen=True)
class Plan:
    request: PlanRequest
    target: ModelShape
    source: ModelShape
    placement: Placement
    engine: EngineMemory
    num_engines: int
    learner: LearnerMemory
    slots: tuple[GpuSlot, ...]
    engine_nodes: tuple[int, ...]  # node of each engine
    learner_nodes: tuple[int, ...]  # node of each learner rank
    notes: tuple[str, ...] = field(default=())

    @property
    def peak_gpu_bytes(self) -> int:
        return max(slot.bytes_needed for slot in self.slots)

    def config_overrides(self) -> dict[str, Any]:
        """The ``--set`` values of a btp-ray run that uses this plan."""
        return {
            "sampling.tensor_parallel_size": self.engine.tensor_parallel_size,
            "sampling.num_engines": self.num_engines,
            "resources.sampler_actors": self.num_engines,
            "resources.sampler_gpus": self.engine.tensor_parallel_size,
            "training.num_workers": self.learner.num_gpus,
            "training.use_gpu": True,
            "training.bf16": True,
            "training.use_lora": self.request.lora,
            "training.strategy": "deepspeed",
            "training.zero_stage": self.learner.zero_stage,
            "resources.executor_resource": "sandbox" if self.request.sandbox_nodes else None,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "placement": self.placement.value,
            "tensor_parallel_size": self.engine.tensor_parallel_size,
            "num_engines": self.num_engines,
            "engine_nodes": list(self.engine_nodes),
            "engine_gb_per_gpu": round(self.engine.per_gpu / GB, 2),
            "learner_gpus": self.learner.num_gpus,
            "learner_nodes": list(self.learner_nodes),
            "zero_stage": self.learner.zero_stage,
            "learner_gb_per_gpu": round(self.learner.per_gpu / GB, 2),
            "peak_gb_per_gpu": round(self.peak_gpu_bytes / GB, 2),
            "target_params": self.target.total_params(),
            "source_params": self.source.total_params(),
            "config": self.config_overrides(),
        }


def _gb(value: int) -> str:
    return f"{value / GB:.1f} GB"


def _tp_choices(request: PlanRequest, source: ModelShape) -> list[int]:
    if request.tensor_parallel_size is not None:
        tp = request.tensor_parallel_size
        if tp > request.gpus_per_node:
            raise PlanRefused(
                f"--tensor-parallel-size {tp} exceeds --gpus-per-node {request.gpus_per_node}: one engine's GPUs "
                f"must be on one node"
            )
        if source.num_heads % tp:
            raise PlanRefused(f"--tensor-parallel-size {tp} must divide the source model's {source.num_heads} heads")
        return [tp]
    choices, tp = [], 1
    while tp <= request.gpus_per_node:
        if source.num_heads % tp == 0:
            choices.append(tp)
        tp *= 2
    return choices


def _learner_sizes(request: PlanRequest, available: int) -> list[int]:
    if request.learner_gpus is not None:
        return [request.learner_gpus] if request.learner_gpus <= available else []
    sizes = [n for n in (1, 2, 4, 8) if n <= min(available, request.gpus_per_node)]
    sizes += [k * request.gpus_per_node for k in range(2, request.nodes + 1) if k * request.gpus_per_node <= available]
    return sizes


def _learner(request: PlanRequest, target: ModelShape, num_gpus: int, stage: int) -> LearnerMemory:
    return learner_memory(
        target,
        num_gpus=num_gpus,
        zero_stage=stage,
        lora_rank=request.lora_rank if request.lora else None,
        micro_batch=request.micro_batch,
        seq_len=request.seq_len,
        checkpointing=request.checkpointing,
    )


def _stages(request: PlanRequest) -> tuple[int, ...]:
    return (request.zero_stage,) if request.zero_stage is not None else (2, 3)


def _check_alone(request: PlanRequest, target: ModelShape, source: ModelShape, tps: list[int]) -> None:
    """Refuse early when the learner on every GPU, or one engine on a whole node, cannot fit even alone."""
    usable = request.usable_bytes
    budget = f"a GPU has {_gb(usable)} usable ({request.gpu_memory_gb:g} GB x {request.gpu_memory_utilization:g})"
    best = min(
        (_learner(request, target, request.total_gpus, stage) for stage in _stages(request)), key=lambda m: m.per_gpu
    )
    if best.per_gpu > usable:
        kind = f"LoRA r{request.lora_rank}" if request.lora else "full fine-tune"
        hint = "more or larger GPUs" if not request.lora else "more or larger GPUs or a shorter --seq-len"
        if not request.lora:
            hint = "use LoRA (--lora), " + hint
        raise PlanRefused(
            f"the learner cannot fit: a {kind} of {request.target} ({target.total_params() / 1e9:.1f} B parameters) "
            f"needs {_gb(best.per_gpu)} per GPU under ZeRO-{best.zero_stage} on {best.num_gpus} GPU(s) "
            f"({_gb(best.model_states)} model states + {_gb(best.activations)} activations + {_gb(best.overhead)} "
            f"runtime) but {budget}; {hint}"
        )
    concurrent = request.beam_width * request.problems_per_engine
    widest = engine_memory(source, max(tps), concurrent, request.seq_len) if tps else None
    if widest is None or widest.per_gpu > usable:
        need = _gb(widest.per_gpu) if widest else "?"
        raise PlanRefused(
            f"the samplers cannot fit: {request.source} at tensor parallel {max(tps) if tps else '?'} needs {need} "
            f"per GPU ({_gb(widest.weights_per_gpu) if widest else '?'} weights + "
            f"{_gb(widest.kv_cache_per_gpu) if widest else '?'} KV cache for {concurrent} sequences x "
            f"{request.seq_len} tokens) but {budget}; lower --beam-width, --problems-per-engine or --seq-len, "
            f"or use larger GPUs"
        )


def plan(request: PlanRequest) -> Plan:
    """The placement for ``request``; raises :class:`PlanRefused` (one line) when nothing fits."""
    target, source = model_shape(request.target), model_shape(request.source)
    tps = _tp_choices(request, source)
    _check_alone(request, target, source, tps)
    concurrent = request.beam_width * request.problems_per_engine
    modes = [request.placement] if request.placement is not Placement.AUTO else [Placement.SPLIT, Placement.COLOCATE]
    reasons = []
    for mode in modes:
        for tp in tps:
            engine = engine_memory(source, tp, concurrent, request.seq_len)
            if mode is Placement.SPLIT:
                found = _split(request, target, engine, tp)
            else:
                found = _colocate(request, target, engine, tp)
            if isinstance(found, Plan):
                return found
            reasons.append(found)
    raise PlanRefused(reasons[-1] if reasons else f"no tensor-parallel size divides {source.num_heads} heads")


def _split(request: PlanRequest, target: ModelShape, engine: EngineMemory, tp: int) -> Plan | str:
    usable = request.usable_bytes
    if engine.per_gpu > usable:
        return f"one engine at tensor parallel {tp} needs {_gb(engine.per_gpu)} per GPU, over {_gb(usable)} usable"
    for size in _learner_sizes(request, request.total_gpus - tp):
        for stage in _stages(request):
            learner = _learner(request, target, size, stage)
            if learner.per_gpu > usable:
                continue
            # Learner ranks take whole GPUs from the last node backwards (its ranks stay together on few nodes).
            free = [request.gpus_per_node] * request.nodes
            learner_nodes: list[int] = []
            for node in reversed(range(request.nodes)):
                take = min(free[node], size - len(learner_nodes))
                free[node] -= take
                learner_nodes += [node] * take
            engine_nodes = _spread_engines(free, tp, request.num_engines)
            if not engine_nodes:
                continue
            return _build(request, target, engine, learner, Placement.SPLIT, engine_nodes, sorted(learner_nodes))
    return (
        f"split placement: no learner size leaves a node with {tp} free GPU(s) for an engine while each rank fits "
        f"{_gb(usable)}; add GPUs or use --placement colocate"
    )


def _colocate(request: PlanRequest, target: ModelShape, engine: EngineMemory, tp: int) -> Plan | str:
    usable, size = request.usable_bytes, request.learner_gpus or request.total_gpus
    best: LearnerMemory | None = None
    for stage in _stages(request):
        learner = _learner(request, target, size, stage)
        if best is None or learner.per_gpu < best.per_gpu:
            best = learner
        if engine.per_gpu + learner.per_gpu <= usable:
            engine_nodes = _spread_engines([request.gpus_per_node] * request.nodes, tp, request.num_engines)
            learner_nodes = [n for n in range(request.nodes) for _ in range(request.gpus_per_node)][:size]
            return _build(request, target, engine, learner, Placement.COLOCATE, engine_nodes, learner_nodes)
    assert best is not None
    return (
        f"colocated, each GPU needs {_gb(engine.per_gpu)} for an engine shard (tensor parallel {tp}) + "
        f"{_gb(best.per_gpu)} for a learner rank (ZeRO-{best.zero_stage}) but has {_gb(usable)} usable; add GPUs, "
        f"use larger ones, or lower --beam-width / --seq-len"
    )


def _spread_engines(free: list[int], tp: int, wanted: int | None) -> list[int]:
    """Engines round-robin over nodes (one per node per round), each on ``tp`` free GPUs of one node."""
    free, engine_nodes = list(free), []
    while wanted is None or len(engine_nodes) < wanted:
        placed = False
        for node, count in enumerate(free):
            if count >= tp and (wanted is None or len(engine_nodes) < wanted):
                free[node] -= tp
                engine_nodes.append(node)
                placed = True
        if not placed:
            break
    if wanted is not None and len(engine_nodes) < wanted:
        return []
    return engine_nodes


def _build(
    request: PlanRequest,
    target: ModelShape,
    engine: EngineMemory,
    learner: LearnerMemory,
    mode: Placement,
    engine_nodes: list[int],
    learner_nodes: list[int],
) -> Plan:
    source = model_shape(request.source)
    roles: dict[tuple[int, int], list[str]] = {}
    need: dict[tuple[int, int], int] = {}
    next_gpu = [0] * request.nodes
    for index, node in enumerate(engine_nodes):
        for shard in range(engine.tensor_parallel_size):
            key = (node, next_gpu[node])
            next_gpu[node] += 1
            roles.setdefault(key, []).append(f"engine {index} shard {shard}")
            need[key] = need.get(key, 0) + engine.per_gpu
    learner_gpu = [0] * request.nodes if mode is Placement.COLOCATE else next_gpu
    for rank, node in enumerate(learner_nodes):
        key = (node, learner_gpu[node])
        learner_gpu[node] += 1
        roles.setdefault(key, []).append(f"learner rank {rank}")
        need[key] = need.get(key, 0) + learner.per_gpu
    slots = [
        GpuSlot(node, gpu, tuple(roles.get((node, gpu), ["idle"])), need.get((node, gpu), 0))
        for node in range(request.nodes)
        for gpu in range(request.gpus_per_node)
    ]
    notes = []
    if mode is Placement.COLOCATE:
        share = engine.per_gpu / (request.gpu_memory_gb * GB)
        notes.append(
            f"colocated: set sampling.gpu_memory_utilization to {share:.2f} so vLLM leaves the rest to the learner"
        )
    return Plan(
        request,
        target,
        source,
        mode,
        engine,
        len(engine_nodes),
        learner,
        tuple(slots),
        tuple(engine_nodes),
        tuple(learner_nodes),
        tuple(notes),
    )
