"""Random-weight models of a real architecture (Llama), built locally with no download: for fast tests and for the
offline GPU check, where only the tokenizer folder of the embedded model is available.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


@dataclass(frozen=True)
class LlamaShape:
    """Layer sizes of a Llama model; :data:`TINY` loads in a second, :data:`LLAMA_1B` is a 1B-class model."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError("LlamaShape: hidden_size must divide by num_heads and num_heads by num_kv_heads")


TINY = LlamaShape(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128)
LLAMA_1B = LlamaShape(hidden_size=2048, num_layers=16, num_heads=32, num_kv_heads=8, intermediate_size=8192)


def build_random_llama(
    target: str | Path,
    tokenizer_dir: str | Path,
    shape: LlamaShape = TINY,
    *,
    seed: int = 0,
    dtype: str = "float32",
    device: str = "cpu",
) -> Path:
    """Write a random-weight ``LlamaForCausalLM`` with the tokenizer (and chat template) from ``tokenizer_dir`` to
    ``target``, loadable by transformers, PEFT and vLLM. Returns ``target``. ``device="cuda"`` initialises a large
    model's weights on the GPU (seconds instead of a minute on CPU)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        intermediate_size=shape.intermediate_size,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        tie_word_embeddings=True,
        dtype=dtype,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(target)
    del model
    tokenizer.save_pretrained(target)
    for name in _TOKENIZER_FILES:
        source = Path(tokenizer_dir) / name
        if source.is_file() and not (target / name).is_file():
            shutil.copy(source, target / name)
    return target
