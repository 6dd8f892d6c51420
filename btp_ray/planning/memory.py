"""GPU memory estimates the planner adds up: the learner's model states by ZeRO stage (the formulas of DeepSpeed's
``estimate_zero2/3_model_states_mem_needs``, extended to LoRA where only the adapter trains), its activations, and a
vLLM engine's weights and KV cache for a beam width and sequence length. All figures are bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from btp_ray.planning.shapes import ModelShape

GB = 10**9
# CUDA context, NCCL buffers, allocator fragmentation: what a process holds besides tensors (measured on A100s by
# many reports as 1-3 GB; the planner budgets 2 GB per process).
RUNTIME_OVERHEAD_BYTES = 2 * GB


def zero_model_states_bytes(total_params: int, largest_layer_params: int, stage: int, num_gpus: int) -> int:
    """Per-GPU bytes of a full fine-tune's model states without offload, exactly as DeepSpeed estimates them:
    ZeRO-2 keeps the 16-bit params on every GPU (2 B/param) and shards 16-bit grads, fp32 master params and Adam
    moments (18 B/param); ZeRO-3 shards all of them and gathers the largest layer (4 B/param of it)."""
    if stage == 2:
        return 2 * total_params + int(18 * total_params / num_gpus)
    if stage == 3:
        return 4 * largest_layer_params + int(18 * total_params / num_gpus)
    raise ValueError(f"ZeRO stage must be 2 or 3, got {stage}")


def lora_model_states_bytes(
    total_params: int, largest_layer_params: int, lora_params: int, stage: int, num_gpus: int
) -> int:
    """Per-GPU bytes under LoRA: the frozen 16-bit base (replicated under ZeRO-2, sharded plus one gathered layer
    under ZeRO-3) and the adapter's full training states (16-bit param and grad, fp32 master and Adam moments)."""
    adapter = 2 * lora_params + int(18 * lora_params / num_gpus)
    if stage == 2:
        return 2 * total_params + adapter
    if stage == 3:
        return 4 * largest_layer_params + int(2 * total_params / num_gpus) + adapter
    raise ValueError(f"ZeRO stage must be 2 or 3, got {stage}")


def activation_bytes(shape: ModelShape, micro_batch: int, seq_len: int, checkpointing: bool) -> int:
    """Training activations of one micro-batch in bf16 with flash attention (Korthikanti et al. 2022: 34·s·b·h bytes
    per layer without the quadratic attention term), plus fp32 logits and their gradient (the loss upcasts them).
    With activation checkpointing only each layer's input stays (2·s·b·h) and one layer is recomputed at a time."""
    tokens = micro_batch * seq_len
    per_layer_full = 34 * tokens * shape.hidden_size
    layers = (
        shape.num_layers * 2 * tokens * shape.hidden_size + per_layer_full
        if checkpointing
        else (shape.num_layers * per_layer_full)
    )
    logits = 2 * 4 * tokens * shape.vocab_size
    return layers + logits


@dataclass(frozen=True)
class EngineMemory:
    """One vLLM engine's needs per GPU at a tensor-parallel size."""

    tensor_parallel_size: int
    weights_per_gpu: int
    kv_cache_per_gpu: int
    overhead_per_gpu: int

    @property
    def per_gpu(self) -> int:
        return self.weights_per_gpu + self.kv_cache_per_gpu + self.overhead_per_gpu


def engine_memory(shape: ModelShape, tp: int, concurrent_sequences: int, seq_len: int) -> EngineMemory:
    """Weights (bf16) and the KV cache of ``concurrent_sequences`` sequences of ``seq_len`` tokens, split over ``tp``
    GPUs (vLLM shards both by attention head), plus the per-process overhead."""
    weights = 2 * shape.total_params()
    kv = shape.kv_bytes_per_token() * concurrent_sequences * seq_len
    return EngineMemory(tp, -(-weights // tp), -(-kv // tp), RUNTIME_OVERHEAD_BYTES)


@dataclass(frozen=True)
class LearnerMemory:
    """One learner rank's needs."""

    num_gpus: int
    zero_stage: int
    model_states: int
    activations: int
    overhead: int

    @property
    def per_gpu(self) -> int:
        return self.model_states + self.activations + self.overhead


def learner_memory(
    shape: ModelShape,
    *,
    num_gpus: int,
    zero_stage: int,
    lora_rank: int | None,
    micro_batch: int,
    seq_len: int,
    checkpointing: bool,
) -> LearnerMemory:
    """A learner rank's bytes on ``num_gpus`` ranks: model states (full or LoRA) + activations + overhead."""
    total, largest = shape.total_params(), shape.largest_layer_params()
    if lora_rank is None:
        states = zero_model_states_bytes(total, largest, zero_stage, num_gpus)
    else:
        states = lora_model_states_bytes(total, largest, shape.lora_params(lora_rank), zero_stage, num_gpus)
    acts = activation_bytes(shape, micro_batch, seq_len, checkpointing)
    return LearnerMemory(num_gpus, zero_stage, states, acts, RUNTIME_OVERHEAD_BYTES)
