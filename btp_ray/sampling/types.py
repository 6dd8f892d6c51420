"""What a sampler is asked (:class:`GenerationParams`) and what it returns (:class:`Candidate`), plus the typed
errors raised across sampler and actor boundaries.

Possibility follows the BTP paper: ``exp(mean log-prob of the generated tokens)``, EOS included when it was generated,
padding never. It is ``None`` when the backend gave no log-probs (some APIs); P2Value then falls back to pass rate.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any


class SamplingStrategy(str, enum.Enum):
    """How candidates are drawn."""

    BEAM = "beam"  # k beams, deterministic, with a length penalty (APIs: n samples ranked by mean log-prob)
    SAMPLE = "sample"  # n independent samples with temperature / top-p
    GREEDY = "greedy"  # one deterministic candidate
    # The trade of exactness for speed, named: n samples (temperature / top-p) ranked by mean log-prob, in place of
    # beam search. What API models get for ``beam``; on vLLM it costs a sampling pass, not a beam search.
    SAMPLE_AND_RANK = "sample_and_rank"

    @property
    def samples(self) -> bool:
        """Candidates are drawn at random (temperature / top-p apply)."""
        return self in (SamplingStrategy.SAMPLE, SamplingStrategy.SAMPLE_AND_RANK)


class PromptFormat(str, enum.Enum):
    """How a problem's prompt is shown to the model."""

    AUTO = "auto"  # chat when the model has a chat template (or is a chat API), raw otherwise
    RAW = "raw"  # the prompt text as is; the model continues it
    CHAT = "chat"  # a user message (plus optional system prompt) through the chat template


class FinishReason(str, enum.Enum):
    """Why generation stopped."""

    STOP = "stop"  # EOS or a stop sequence
    LENGTH = "length"  # max_new_tokens reached
    ERROR = "error"  # the backend failed for this candidate (API content filter, abort)


DEFAULT_SYSTEM_PROMPT = (
    "You are an expert Python programmer. Complete the user's function. Answer with the complete Python code in a "
    "single ```python code block."
)


@dataclass(frozen=True)
class GenerationParams:
    """One generation request's settings, shared by every backend.

    ``num_candidates`` is k for beam search, n for sampling (and sample-and-rank) and must be 1 for greedy.
    ``length_penalty`` divides a beam's summed log-prob by ``num_tokens ** length_penalty`` (HF and vLLM semantics).
    """

    strategy: SamplingStrategy = SamplingStrategy.BEAM
    num_candidates: int = 5
    max_new_tokens: int = 512
    temperature: float = 0.8
    top_p: float = 0.95
    length_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = 0
    prompt_format: PromptFormat = PromptFormat.AUTO
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    return_token_logprobs: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "strategy", SamplingStrategy(self.strategy))
        object.__setattr__(self, "prompt_format", PromptFormat(self.prompt_format))
        object.__setattr__(self, "stop", tuple(self.stop))
        if self.num_candidates < 1:
            raise ValueError(f"GenerationParams.num_candidates must be >= 1, got {self.num_candidates}")
        if self.strategy is SamplingStrategy.GREEDY and self.num_candidates != 1:
            raise ValueError("GenerationParams.num_candidates must be 1 for strategy=greedy (use beam for k > 1)")
        if self.max_new_tokens < 1:
            raise ValueError(f"GenerationParams.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.strategy.samples and not self.temperature > 0:
            raise ValueError(
                f"GenerationParams.temperature must be > 0 for strategy={self.strategy.value} (use greedy for 0)"
            )
        if self.temperature < 0:
            raise ValueError(f"GenerationParams.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"GenerationParams.top_p must be in (0, 1], got {self.top_p}")
        if any(not s for s in self.stop):
            raise ValueError("GenerationParams.stop must not contain empty strings")

    @property
    def is_deterministic(self) -> bool:
        return not self.strategy.samples

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update(strategy=self.strategy.value, prompt_format=self.prompt_format.value, stop=list(self.stop))
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationParams:
        data = dict(data)
        data["stop"] = tuple(data.get("stop", ()))
        return cls(**data)


@dataclass(frozen=True)
class SamplerIdentity:
    """Which sampler produced a candidate: backend (hf/vllm/openai), model, LoRA adapter name or None."""

    backend: str
    model: str
    adapter: str | None = None

    def __str__(self) -> str:
        base = f"{self.backend}:{self.model}"
        return f"{base}+{self.adapter}" if self.adapter else base

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "model": self.model, "adapter": self.adapter}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SamplerIdentity:
        return cls(**data)


@dataclass(frozen=True)
class Candidate:
    """One generated program with its generation possibility.

    ``rank`` is the position within its problem after ordering by ``score`` (best first). ``score`` is the beam
    score (``sum_logprob / num_tokens ** length_penalty``) for beam search and the mean log-prob otherwise; None when
    no log-probs exist, and such candidates keep the backend's order.

    ``source`` says where the program came from: ``model`` (generated by ``sampler`` now), ``samples`` (a samples
    file), ``reference`` / ``incorrect_reference`` (the dataset's solutions). ``scored_by`` names what produced the
    log-probs: the sampler itself for generated programs, the producer of a samples file, or the model that scored
    the program teacher-forced (see :mod:`btp_ray.sources.scorer`).
    """

    task_id: str
    completion: str
    program: str
    num_tokens: int
    finish_reason: FinishReason
    sampler: SamplerIdentity
    rank: int = 0
    token_ids: tuple[int, ...] | None = None
    token_logprobs: tuple[float, ...] | None = None
    sum_logprob: float | None = None
    mean_logprob: float | None = None
    possibility: float | None = None
    score: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    source: str = "model"
    scored_by: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "finish_reason", FinishReason(self.finish_reason))
        if self.token_ids is not None:
            object.__setattr__(self, "token_ids", tuple(self.token_ids))
        if self.token_logprobs is not None:
            object.__setattr__(self, "token_logprobs", tuple(self.token_logprobs))
        if self.num_tokens < 0:
            raise ValueError(f"Candidate.num_tokens must be >= 0, got {self.num_tokens}")
        if self.possibility is not None and not 0 <= self.possibility <= 1:
            raise ValueError(f"Candidate.possibility must be in [0, 1] or None, got {self.possibility}")

    @property
    def sampler_id(self) -> str:
        return str(self.sampler)

    @property
    def possibility_scorer(self) -> str | None:
        """What gave this candidate its log-probs (None when nothing did)."""
        if self.mean_logprob is None:
            return None
        return self.scored_by or self.sampler_id

    def with_rank(self, rank: int) -> Candidate:
        return replace(self, rank=rank)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "completion": self.completion,
            "program": self.program,
            "num_tokens": self.num_tokens,
            "finish_reason": self.finish_reason.value,
            "sampler": self.sampler.to_dict(),
            "rank": self.rank,
            "token_ids": list(self.token_ids) if self.token_ids is not None else None,
            "token_logprobs": list(self.token_logprobs) if self.token_logprobs is not None else None,
            "sum_logprob": self.sum_logprob,
            "mean_logprob": self.mean_logprob,
            "possibility": self.possibility,
            "score": self.score,
            "metadata": self.metadata,
            "source": self.source,
            "scored_by": self.scored_by,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Candidate:
        data = dict(data)
        data["sampler"] = SamplerIdentity.from_dict(data["sampler"])
        return cls(**data)


@dataclass(frozen=True)
class LogprobSummary:
    """Sum, mean, possibility and beam score of a sequence's per-token log-probs."""

    sum_logprob: float
    mean_logprob: float
    possibility: float
    score: float

    @classmethod
    def of(cls, token_logprobs: Sequence[float], length_penalty: float = 1.0) -> LogprobSummary:
        if not token_logprobs:
            # Nothing generated: the empty sequence's probability is 1 and it carries no evidence.
            return cls(sum_logprob=0.0, mean_logprob=0.0, possibility=1.0, score=0.0)
        total = float(math.fsum(token_logprobs))
        count = len(token_logprobs)
        mean = total / count
        score = total / count**length_penalty
        return cls(sum_logprob=total, mean_logprob=mean, possibility=math.exp(mean), score=score)


def rank_candidates(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Order one problem's candidates best first (by score; unscored ones keep their order, after scored ones) and
    number them."""
    indexed = list(enumerate(candidates))
    indexed.sort(key=lambda item: (item[1].score is None, -(item[1].score or 0.0), item[0]))
    return [candidate.with_rank(rank) for rank, (_, candidate) in enumerate(indexed)]


class SamplerError(RuntimeError):
    """A sampler failed; ``retryable`` tells the caller whether trying again may help."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class SamplerConfigError(SamplerError, ValueError):
    """The sampler cannot be built as configured (unknown model, missing backend, missing API key)."""


class APIAuthError(SamplerError):
    """The API rejected the key (401/403) or does not know the model (404): retrying cannot help."""


class APIRequestError(SamplerError):
    """An API request failed after all retries, or the server answered something unusable."""
