"""The :class:`Sampler` interface shared by every backend, and the pieces backends share: how a problem becomes a
prompt (raw text or chat messages), how generated tokens become a :class:`Candidate` (stop sequences, log-prob
summary, program extraction, ranking).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from btp_ray.data.types import Problem
from btp_ray.sampling.extract import extract_program
from btp_ray.sampling.types import (
    Candidate,
    FinishReason,
    GenerationParams,
    LogprobSummary,
    PromptFormat,
    SamplerError,
    SamplerIdentity,
    SamplingStrategy,
)


class Sampler(abc.ABC):
    """Generates candidate programs for problems.

    ``generate`` returns one list per problem, in input order, each ranked best first (``Candidate.rank``).
    """

    @property
    @abc.abstractmethod
    def identity(self) -> SamplerIdentity:
        """Backend, model and active adapter; stamped on every candidate."""

    @abc.abstractmethod
    def generate(self, problems: Sequence[Problem], params: GenerationParams) -> list[list[Candidate]]:
        """Candidates for each problem."""

    def load_adapter(self, path: str, name: str) -> None:
        """Serve the LoRA adapter at ``path`` under ``name`` from now on, without reloading the base model."""
        raise SamplerError(f"{self.identity.backend} sampler cannot load LoRA adapters (asked for {name!r} at {path})")

    def usage(self) -> dict[str, Any]:
        """Counters for reporting (tokens, requests, cost where known)."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook: most backends hold nothing to release
        """Release engines and connections."""

    def __enter__(self) -> Sampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_code_prompt(problem: Problem) -> bool:
    """A HumanEval-style prompt: a function signature (plus docstring) that the completion continues."""
    return bool(problem.entry_point) and f"def {problem.entry_point}(" in problem.prompt


def user_message(problem: Problem) -> str:
    """The chat user message for ``problem``."""
    if is_code_prompt(problem):
        return f"Complete the following Python function.\n\n```python\n{problem.prompt.rstrip()}\n```"
    return problem.prompt


def chat_messages(problem: Problem, params: GenerationParams) -> list[dict[str, str]]:
    messages = []
    if params.system_prompt:
        messages.append({"role": "system", "content": params.system_prompt})
    messages.append({"role": "user", "content": user_message(problem)})
    return messages


@dataclass(frozen=True)
class RenderedPrompt:
    """A problem as the model sees it: text, token ids (local backends) and whether it went through chat."""

    text: str
    token_ids: tuple[int, ...]
    chat: bool


class LocalPromptRenderer:
    """Renders problems for a local model with its Hugging Face tokenizer (HF and vLLM share it, so both backends
    see the same token ids)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def render(self, problem: Problem, params: GenerationParams) -> RenderedPrompt:
        chat = params.prompt_format is PromptFormat.CHAT or (
            params.prompt_format is PromptFormat.AUTO and self.has_chat_template
        )
        if chat:
            if not self.has_chat_template:
                raise SamplerError("prompt_format=chat needs a tokenizer with a chat template; use prompt_format=raw")
            text = self.tokenizer.apply_chat_template(
                chat_messages(problem, params), tokenize=False, add_generation_prompt=True
            )
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            text = problem.prompt
            ids = self.tokenizer(text)["input_ids"]
        return RenderedPrompt(text=text, token_ids=tuple(ids), chat=chat)


def cut_at_stop(
    token_ids: Sequence[int], decode: Callable[[Sequence[int]], str], stop: Sequence[str]
) -> tuple[int, str] | None:
    """Where the first stop sequence ends generation: ``(number of tokens kept, text before the stop)``, or None.

    The kept tokens are the shortest prefix whose text contains a stop sequence, so the candidate's log-probs are
    exactly those of the tokens the model produced up to and including the stop.
    """
    if not stop or not token_ids:
        return None
    full = decode(token_ids)
    if not any(s in full for s in stop):
        return None
    low, high = 1, len(token_ids)
    while low < high:  # the shortest prefix containing a stop (containment is monotone in the prefix length)
        middle = (low + high) // 2
        if any(s in decode(token_ids[:middle]) for s in stop):
            high = middle
        else:
            low = middle + 1
    text = decode(token_ids[:low])
    cut = min(text.index(s) for s in stop if s in text)
    return low, text[:cut]


def make_candidate(
    problem: Problem,
    *,
    completion: str,
    chat: bool,
    identity: SamplerIdentity,
    finish_reason: FinishReason,
    params: GenerationParams,
    token_ids: Sequence[int] | None = None,
    token_logprobs: Sequence[float] | None = None,
    num_tokens: int | None = None,
    metadata: dict[str, Any] | None = None,
) -> Candidate:
    """A candidate with its program extracted and its log-prob summary computed."""
    summary = None
    if token_logprobs is not None:
        penalty = params.length_penalty if params.strategy is SamplingStrategy.BEAM else 1.0
        summary = LogprobSummary.of(token_logprobs, penalty)
    count = num_tokens if num_tokens is not None else len(token_ids or token_logprobs or ())
    return Candidate(
        task_id=problem.task_id,
        completion=completion,
        program=extract_program(completion, problem.prompt, problem.entry_point, chat=chat),
        num_tokens=count,
        finish_reason=finish_reason,
        sampler=identity,
        token_ids=tuple(token_ids) if token_ids is not None else None,
        token_logprobs=tuple(token_logprobs) if token_logprobs is not None and params.return_token_logprobs else None,
        sum_logprob=summary.sum_logprob if summary else None,
        mean_logprob=summary.mean_logprob if summary else None,
        possibility=summary.possibility if summary else None,
        score=summary.score if summary else None,
        metadata=metadata or {},
    )


def candidate_from_tokens(
    problem: Problem,
    rendered: RenderedPrompt,
    generated: Sequence[int],
    logprobs: Sequence[float],
    *,
    eos_ids: frozenset[int],
    decode: Callable[[Sequence[int]], str],
    identity: SamplerIdentity,
    params: GenerationParams,
    backend_finish: FinishReason | None = None,
    metadata: dict[str, Any] | None = None,
) -> Candidate:
    """Build a candidate from a local backend's generated tokens and their per-token log-probs (EOS included when
    generated). Stop sequences cut tokens and log-probs together. ``metadata`` is stored on the candidate (which
    strategy and beam-search implementation produced it)."""
    assert len(generated) == len(logprobs), "one log-prob per generated token"
    ended_by_eos = bool(generated) and generated[-1] in eos_ids
    visible = generated[:-1] if ended_by_eos else generated
    stopped = cut_at_stop(visible, decode, params.stop)
    if stopped is not None:
        kept, completion = stopped
        generated, logprobs = generated[:kept], logprobs[:kept]
        finish = FinishReason.STOP
    else:
        completion = decode(visible)
        finish = FinishReason.STOP if ended_by_eos else (backend_finish or FinishReason.LENGTH)
    return make_candidate(
        problem,
        completion=completion,
        chat=rendered.chat,
        identity=identity,
        finish_reason=finish,
        params=params,
        token_ids=list(generated),
        token_logprobs=list(logprobs),
        metadata=metadata,
    )


def eos_token_ids(generation_config: Any, tokenizer: Any) -> frozenset[int]:
    """The EOS ids transformers' ``generate`` stops at: the generation config's and the tokenizer's.

    ``generation_config`` is a model's ``GenerationConfig`` (or None), or the model folder to read it from.
    """
    if isinstance(generation_config, str):
        from transformers import GenerationConfig

        try:
            generation_config = GenerationConfig.from_pretrained(generation_config)
        except OSError:  # no generation_config.json
            generation_config = None
    configured = getattr(generation_config, "eos_token_id", None)
    ids: set[int] = set()
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return frozenset(ids)
