"""Model shapes known offline: layers, hidden size, heads, key/value heads, vocabulary and MLP width of the models
btp-ray names (the aliases of :mod:`btp_ray.models`), or read from a local ``config.json``; from a shape the planner
derives the parameter count, the largest layer and the KV cache per token without touching the hub.

The table holds the values of each model's published ``config.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from btp_ray.models import EMBEDDED, ModelKind, UnknownModelError, resolve_model


class UnknownShapeError(ValueError):
    """A model whose shape is neither in the table nor in a local ``config.json``."""


@dataclass(frozen=True)
class ModelShape:
    """The dimensions that size a decoder-only transformer. ``gated_mlp``: three MLP matrices (Llama's SwiGLU)
    instead of two (GPT-2, StarCoder2); ``bias``: linear layers carry biases and norms are LayerNorms (StarCoder2,
    GPT-2)."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    intermediate_size: int
    tie_embeddings: bool = False
    gated_mlp: bool = True
    bias: bool = False
    learned_positions: int = 0  # rows of a learned position embedding (GPT-2, GPT-Neo); rotary models have none

    def __post_init__(self) -> None:
        for field_name in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "vocab_size", "intermediate_size"):
            if getattr(self, field_name) < 1:
                raise ValueError(f"ModelShape.{field_name} must be >= 1 for {self.name}")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(f"ModelShape {self.name}: heads must divide hidden size and KV heads must divide heads")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def attention_params(self) -> int:
        h = self.hidden_size
        weights = 2 * h * h + 2 * h * self.kv_dim  # q and o; k and v (grouped-query: narrower)
        return weights + ((2 * h + 2 * self.kv_dim) if self.bias else 0)

    def mlp_params(self) -> int:
        h, i = self.hidden_size, self.intermediate_size
        matrices = 3 if self.gated_mlp else 2
        return matrices * h * i + ((i + h) if self.bias else 0)

    def layer_params(self) -> int:
        norms = 2 * self.hidden_size * (2 if self.bias else 1)  # LayerNorm has a bias, RMSNorm none
        return self.attention_params() + self.mlp_params() + norms

    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    def total_params(self) -> int:
        head = 0 if self.tie_embeddings else self.embedding_params()
        final_norm = self.hidden_size * (2 if self.bias else 1)
        positions = self.learned_positions * self.hidden_size
        return self.embedding_params() + head + positions + self.num_layers * self.layer_params() + final_norm

    def largest_layer_params(self) -> int:
        """The largest single module's parameters, as DeepSpeed's ``model_to_params`` counts them (the embedding
        or the LM head in these models; else the widest MLP matrix)."""
        return max(self.embedding_params(), self.hidden_size * self.intermediate_size)

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """Key + value cache of one token across all layers."""
        return 2 * self.num_layers * self.kv_dim * dtype_bytes

    def lora_params(self, rank: int) -> int:
        """LoRA parameters on q, k, v and o of every layer (btp-ray's default targets): r x (in + out) each."""
        h = self.hidden_size
        per_layer = rank * ((h + h) + (h + self.kv_dim) + (h + self.kv_dim) + (h + h))
        return self.num_layers * per_layer


def _llama(name: str, layers: int, hidden: int, heads: int, kv: int, vocab: int, inter: int, tie: bool = False):
    return ModelShape(name, layers, hidden, heads, kv, vocab, inter, tie_embeddings=tie)


# Published config.json values; keys are the hub ids the aliases of btp_ray.models resolve to.
KNOWN_SHAPES: dict[str, ModelShape] = {
    shape.name: shape
    for shape in (
        _llama("HuggingFaceTB/SmolLM2-135M-Instruct", 30, 576, 9, 3, 49152, 1536, tie=True),
        _llama("HuggingFaceTB/SmolLM2-360M-Instruct", 32, 960, 15, 5, 49152, 2560, tie=True),
        _llama("HuggingFaceTB/SmolLM2-1.7B-Instruct", 24, 2048, 32, 32, 49152, 8192, tie=True),
        _llama("deepseek-ai/deepseek-coder-1.3b-instruct", 24, 2048, 16, 16, 32256, 5504),
        _llama("deepseek-ai/deepseek-coder-6.7b-instruct", 32, 4096, 32, 32, 32256, 11008),
        _llama("deepseek-ai/deepseek-coder-33b-instruct", 62, 7168, 56, 8, 32256, 19200),
        _llama("codellama/CodeLlama-34b-Instruct-hf", 48, 8192, 64, 8, 32000, 22016),
        _llama("WizardLMTeam/WizardCoder-Python-34B-V1.0", 48, 8192, 64, 8, 32001, 22016),
        _llama("MathGenie/MathCoder2-Llama-3-8B", 32, 4096, 32, 8, 128256, 14336),
        ModelShape("bigcode/starcoder2-15b", 40, 6144, 48, 4, 49152, 24576, gated_mlp=False, bias=True),
        ModelShape(
            "openai-community/gpt2",
            12,
            768,
            12,
            12,
            50257,
            3072,
            True,
            gated_mlp=False,
            bias=True,
            learned_positions=1024,
        ),
        ModelShape(
            "EleutherAI/gpt-neo-2.7B", 32, 2560, 20, 20, 50257, 10240, True, gated_mlp=False, learned_positions=2048
        ),
    )
}
KNOWN_SHAPES[EMBEDDED] = KNOWN_SHAPES["HuggingFaceTB/SmolLM2-135M-Instruct"]


def shape_from_config(path: str | Path, name: str | None = None) -> ModelShape:
    """A shape from a transformers ``config.json`` (a file or the folder holding it)."""
    file = Path(path)
    if file.is_dir():
        file = file / "config.json"
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise UnknownShapeError(f"{file}: cannot read a model config.json ({exc})") from None

    def first(*keys: str, default: int | None = None) -> int:
        for key in keys:
            if data.get(key) is not None:
                return int(data[key])
        if default is None:
            raise UnknownShapeError(f"{file}: no {keys[0]} in config.json (not a decoder-only transformer config)")
        return default

    hidden = first("hidden_size", "n_embd", "d_model")
    heads = first("num_attention_heads", "n_head")
    model_type = str(data.get("model_type", ""))
    gated = model_type not in ("gpt2", "gpt_bigcode", "starcoder2", "gpt_neo", "gpt_neox")
    return ModelShape(
        name=name or str(file.parent),
        num_layers=first("num_hidden_layers", "n_layer", "num_layers"),
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=first("num_key_value_heads", "n_head_kv", default=heads),
        vocab_size=first("vocab_size"),
        intermediate_size=first("intermediate_size", "n_inner", "ffn_dim", default=4 * hidden),
        tie_embeddings=bool(data.get("tie_word_embeddings", model_type in ("gpt2", "gpt_neo"))),
        gated_mlp=gated,
        bias=model_type in ("gpt2", "gpt_bigcode", "starcoder2") or bool(data.get("use_bias", False)),
        learned_positions=first("n_positions", "max_position_embeddings", default=0)
        if model_type in ("gpt2", "gpt_bigcode", "gpt_neo")
        else 0,
    )


def model_shape(name: str) -> ModelShape:
    """The shape of ``name`` (alias, hub id or local folder): the table first, then a local ``config.json``."""
    try:
        spec = resolve_model(name)
    except UnknownModelError as exc:
        raise UnknownShapeError(str(exc)) from None
    if spec.kind is not ModelKind.LOCAL:
        raise UnknownShapeError(f"{name!r} is an API model ({spec.kind.value}): it takes no GPU to plan for")
    if spec.model_id in KNOWN_SHAPES:
        return KNOWN_SHAPES[spec.model_id]
    if Path(spec.model_id).exists():
        return shape_from_config(spec.model_id, name=name)
    known = ", ".join(sorted(k for k in KNOWN_SHAPES if k != EMBEDDED))
    raise UnknownShapeError(
        f"no offline shape for {name!r}: give a local model folder with a config.json, or one of {known}"
    )
