"""A random-weight Llama with the embedded model's tokenizer and chat template: the real architecture and
tokenization in a few MB for smoke tests and CI, or a 1B-class one for GPU throughput checks."""

from __future__ import annotations

from pathlib import Path

from btp_ray.models import embedded_model_dir


def make_tiny_llama(
    output_dir: str | Path,
    *,
    num_layers: int = 2,
    hidden_size: int = 64,
    num_heads: int | None = None,
    num_kv_heads: int | None = None,
    seed: int = 0,
    tokenizer_from: str | Path | None = None,
) -> Path:
    """Write a ``LlamaForCausalLM`` (``num_layers`` x ``hidden_size``, random weights) and a tokenizer to
    ``output_dir``; returns it. The tokenizer (and vocabulary size) come from ``tokenizer_from`` or the embedded model.
    Heads default to ``hidden_size // 16`` with half as many key/value heads (grouped-query attention, as SmolLM2)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    source = Path(tokenizer_from) if tokenizer_from is not None else embedded_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(source)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 4,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads or max(1, hidden_size // 16),
        num_key_value_heads=num_kv_heads or max(1, (num_heads or hidden_size // 16) // 2),
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    output = Path(output_dir)
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    return output
