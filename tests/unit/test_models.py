"""Model name resolution (aliases, hub ids, local paths, API names) and the embedded default model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from btp_ray.models import (
    EMBEDDED,
    ModelKind,
    UnknownModelError,
    embedded_gguf_path,
    embedded_model_dir,
    local_model_path,
    resolve_model,
)


@pytest.mark.parametrize(
    ("name", "kind", "model_id"),
    [
        ("smollm2-135m", ModelKind.LOCAL, EMBEDDED),
        ("deepseek-1.3b", ModelKind.LOCAL, "deepseek-ai/deepseek-coder-1.3b-instruct"),
        ("deepseek-ai/deepseek-coder-6.7b-instruct", ModelKind.LOCAL, "deepseek-ai/deepseek-coder-6.7b-instruct"),
        ("HuggingFaceTB/SmolLM2-360M-Instruct", ModelKind.LOCAL, "HuggingFaceTB/SmolLM2-360M-Instruct"),
        ("gpt-4o", ModelKind.OPENAI, "gpt-4o"),
        ("gpt-3.5-turbo", ModelKind.OPENAI, "gpt-3.5-turbo"),
        ("o3-mini", ModelKind.OPENAI, "o3-mini"),
        ("deepseek-chat", ModelKind.DEEPSEEK, "deepseek-chat"),
        ("deepseek-reasoner", ModelKind.DEEPSEEK, "deepseek-reasoner"),
    ],
)
def test_resolution_by_name(name: str, kind: ModelKind, model_id: str) -> None:
    spec = resolve_model(name)
    assert (spec.kind, spec.model_id) == (kind, model_id)


def test_explicit_kind_wins_and_paths_resolve(tmp_path: Path) -> None:
    assert resolve_model("my-served-model", kind="openai_compatible").kind is ModelKind.OPENAI_COMPATIBLE
    assert resolve_model("deepseek-chat", kind=ModelKind.OPENAI).kind is ModelKind.OPENAI
    spec = resolve_model(str(tmp_path))
    assert spec.kind is ModelKind.LOCAL and spec.model_id == str(tmp_path.resolve())
    with pytest.raises(UnknownModelError, match="aliases: .*smollm2-135m"):
        resolve_model("no such model")
    with pytest.raises(UnknownModelError, match="empty"):
        resolve_model(" ")
    with pytest.raises(ValueError, match="API model"):
        local_model_path(resolve_model("gpt-4o"))


def test_embedded_model_is_a_loadable_safetensors_folder() -> None:
    assert embedded_gguf_path().suffix == ".gguf"
    folder = embedded_model_dir()
    assert (folder / "model.safetensors").stat().st_size > 100_000_000
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30
    assert "quantization_config" not in config
    assert local_model_path(resolve_model("smollm2-135m")) == str(folder)
    assert embedded_model_dir() == folder  # cached: the second call converts nothing

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids = tokenizer("def add(a, b):\n    return a + b\n", return_tensors="pt").input_ids
    loss = model(ids, labels=ids).loss.item()
    assert loss < 4.0  # real weights: a random model scores ~ln(49152) ≈ 10.8
    assert tokenizer.chat_template
