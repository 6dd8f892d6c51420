"""The API backend: the ``openai`` client against OpenAI, DeepSeek (``api_base``) or any OpenAI-compatible server
(a vLLM server), through the chat or completions endpoint.

APIs have no beam search: ``strategy=beam`` is emulated by ``n`` samples ranked by mean log-prob (so it is not
deterministic). Log-probs are requested; when the endpoint gives none, ``Candidate.possibility`` is None ("unknown")
and P2Value falls back to the pass rate. Requests run concurrently (``max_concurrency``). The SDK's own retries
(``max_retries``: exponential backoff with jitter, ``Retry-After`` honoured) cover 408/409/429/5xx, timeouts and
connection errors; what the SDK cannot see, a 2xx answer whose body is not a usable completion, is asked again here.
401/403/404 fail at once with :class:`APIAuthError`. The API key comes from the constructor
(``--api-key``) or the environment variable the config names, and is never logged, stored in the config or shown by
``repr``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from btp_ray.data.types import Problem
from btp_ray.models import DEEPSEEK_API_BASE, ModelKind
from btp_ray.sampling.base import Sampler, chat_messages, make_candidate
from btp_ray.sampling.config import SamplerConfig
from btp_ray.sampling.types import (
    APIAuthError,
    APIRequestError,
    Candidate,
    FinishReason,
    GenerationParams,
    PromptFormat,
    SamplerConfigError,
    SamplerIdentity,
    SamplingStrategy,
    rank_candidates,
)

logger = logging.getLogger(__name__)

# Dollars per million (prompt, completion) tokens, by model-name prefix (longest match wins); list prices when
# written, override with SamplerConfig.prompt_price_per_mtok / completion_price_per_mtok.
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4": (30.00, 60.00),
    "gpt-3.5-turbo": (0.50, 1.50),
    "deepseek-chat": (0.27, 1.10),
    "deepseek-reasoner": (0.55, 2.19),
}


@dataclass(frozen=True)
class _Choice:
    text: str
    finish_reason: FinishReason
    token_logprobs: list[float] | None
    num_tokens: int | None


class _MalformedResponse(Exception):
    """The server answered 2xx with a body that is not a usable completion."""


class OpenAISampler(Sampler):
    """Candidates from an OpenAI-protocol API."""

    def __init__(self, config: SamplerConfig, *, api_key: str | None = None) -> None:
        try:
            import openai
        except ImportError as exc:
            raise SamplerConfigError("OpenAISampler needs the openai package: pip install openai") from exc
        self.config = config
        self._spec = config.model_spec()
        key = api_key or config.api_key_from_env()
        if key is None:
            if self._spec.kind is ModelKind.OPENAI_COMPATIBLE:
                key = "EMPTY"  # local OpenAI-compatible servers (vLLM) accept any key
            else:
                raise SamplerConfigError(
                    f"no API key for {config.model!r}: pass --api-key or set ${config.key_env_name()}"
                )
        base_url = config.api_base or (DEEPSEEK_API_BASE if self._spec.kind is ModelKind.DEEPSEEK else None)
        # The SDK retries transient failures itself; the hook counts every HTTP attempt, so retries are accounted.
        http_client = openai.DefaultHttpxClient(event_hooks={"request": [self._count_request]})
        self._client = openai.OpenAI(
            api_key=key,
            base_url=base_url,
            timeout=config.request_timeout_s,
            max_retries=config.max_retries,
            http_client=http_client,
        )
        self._openai = openai
        self._lock = threading.Lock()
        self._usage = {"requests": 0, "calls": 0, "prompt_tokens": 0, "completion_tokens": 0}
        self._prices = _prices_for(config)

    @property
    def identity(self) -> SamplerIdentity:
        return SamplerIdentity(backend="openai", model=self._spec.model_id, adapter=None)

    def __repr__(self) -> str:
        return f"OpenAISampler(model={self._spec.model_id!r}, api_base={self.config.api_base!r})"

    def usage(self) -> dict[str, Any]:
        with self._lock:
            usage: dict[str, Any] = dict(self._usage)
        calls = usage.pop("calls")  # one per wanted answer; every HTTP attempt beyond it was a retry
        usage["retries"] = usage["requests"] - calls
        if self._prices is not None:
            prompt_price, completion_price = self._prices
            usage["cost_usd"] = (
                usage["prompt_tokens"] * prompt_price + usage["completion_tokens"] * completion_price
            ) / 1e6
        else:
            usage["cost_usd"] = None
        return usage

    def close(self) -> None:
        self._client.close()

    def generate(self, problems: Sequence[Problem], params: GenerationParams) -> list[list[Candidate]]:
        if not problems:
            return []
        workers = min(self.config.max_concurrency, len(problems))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openai-sampler") as pool:
            return list(pool.map(lambda problem: self._generate_one(problem, params), problems))

    def _use_chat(self, params: GenerationParams) -> bool:
        if params.prompt_format is PromptFormat.AUTO:
            return self.config.api_endpoint == "chat"
        return params.prompt_format is PromptFormat.CHAT

    def _generate_one(self, problem: Problem, params: GenerationParams) -> list[Candidate]:
        chat = self._use_chat(params)
        wanted = params.num_candidates
        choices: list[_Choice] = []
        # A server may return fewer choices than asked (some cap n): ask again for the rest.
        for _ in range(self.config.max_retries + 1):
            choices.extend(self._request_with_retries(problem, params, chat, wanted - len(choices)))
            if len(choices) >= wanted:
                break
        if len(choices) < wanted:
            raise APIRequestError(f"{problem.task_id}: server returned {len(choices)} of {wanted} completions")
        candidates = [
            make_candidate(
                problem,
                completion=choice.text,
                chat=chat,
                identity=self.identity,
                finish_reason=choice.finish_reason,
                params=params,
                token_logprobs=choice.token_logprobs,
                num_tokens=choice.num_tokens,
            )
            for choice in choices[:wanted]
        ]
        return rank_candidates(candidates)

    def _count_request(self, request: Any) -> None:
        with self._lock:
            self._usage["requests"] += 1

    def _request_with_retries(self, problem: Problem, params: GenerationParams, chat: bool, n: int) -> list[_Choice]:
        """One answer of up to ``n`` choices. The SDK has already retried transient failures when an error reaches
        here; only a malformed 2xx body is asked again, at once (the server answered, so it is not overloaded)."""
        openai = self._openai
        with self._lock:
            self._usage["calls"] += 1
        for attempt in range(self.config.max_retries + 1):
            try:
                return self._request(problem, params, chat, n)
            except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
                raise APIAuthError(
                    f"the API rejected the key for {self._spec.model_id!r} (HTTP {exc.status_code}); "
                    f"check --api-key or ${self.config.key_env_name()}"
                ) from None
            except openai.NotFoundError:
                raise APIAuthError(
                    f"model {self._spec.model_id!r} not found at {self._client.base_url} (HTTP 404)"
                ) from None
            except openai.APIStatusError as exc:
                retryable = exc.status_code in (408, 409, 429) or exc.status_code >= 500
                raise APIRequestError(
                    f"{problem.task_id}: HTTP {exc.status_code}: {_error_text(exc)}"
                    + (f" (after {self.config.max_retries} retries)" if retryable else ""),
                    retryable=retryable,
                ) from None
            except (openai.APITimeoutError, openai.APIConnectionError) as exc:
                raise APIRequestError(
                    f"{problem.task_id}: {type(exc).__name__} after {self.config.max_retries} retries", retryable=True
                ) from None
            except _MalformedResponse as exc:
                malformed = exc
                if attempt < self.config.max_retries:
                    logger.warning("%s: %s; retry %d/%d", problem.task_id, exc, attempt + 1, self.config.max_retries)
        raise APIRequestError(
            f"{problem.task_id}: giving up after {self.config.max_retries + 1} attempts: {malformed}",
            retryable=True,
        )

    def _request(self, problem: Problem, params: GenerationParams, chat: bool, n: int) -> list[_Choice]:
        greedy = params.strategy is SamplingStrategy.GREEDY
        common: dict[str, Any] = {
            "model": self._spec.model_id,
            "n": n,
            "max_tokens": params.max_new_tokens,
            "temperature": 0.0 if greedy else params.temperature,
            "top_p": 1.0 if greedy else params.top_p,
        }
        if params.stop:
            common["stop"] = list(params.stop)
        if params.seed is not None:
            common["seed"] = params.seed
        try:
            if chat:
                response = self._client.chat.completions.create(
                    messages=chat_messages(problem, params), logprobs=True, **common
                )
            else:
                response = self._client.completions.create(prompt=problem.prompt, logprobs=0, **common)
        except ValueError as exc:  # a 2xx body that is not JSON, or JSON the client cannot validate
            raise _MalformedResponse(f"malformed response body ({type(exc).__name__})") from None
        try:
            choices = [_parse_choice(choice, chat) for choice in sorted(response.choices, key=lambda c: c.index)]
            usage = response.usage
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise _MalformedResponse(f"malformed response body ({type(exc).__name__})") from None
        if not choices or len(choices) > n:
            raise _MalformedResponse(f"expected up to {n} choices, got {len(choices)}")
        if usage is not None:
            with self._lock:
                self._usage["prompt_tokens"] += usage.prompt_tokens or 0
                self._usage["completion_tokens"] += usage.completion_tokens or 0
        return choices


def _parse_choice(choice: Any, chat: bool) -> _Choice:
    if chat:
        text = choice.message.content
        entries = choice.logprobs.content if choice.logprobs is not None else None
        logprobs = [float(entry.logprob) for entry in entries] if entries else None
    else:
        text = choice.text
        raw = choice.logprobs.token_logprobs if choice.logprobs is not None else None
        logprobs = [float(value) for value in raw if value is not None] if raw else None
    if not isinstance(text, str):
        raise TypeError("choice has no text")
    finish = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH}.get(choice.finish_reason, FinishReason.ERROR)
    return _Choice(
        text=text,
        finish_reason=finish,
        token_logprobs=logprobs,
        num_tokens=len(logprobs) if logprobs is not None else None,
    )


def _prices_for(config: SamplerConfig) -> tuple[float, float] | None:
    if config.prompt_price_per_mtok is not None and config.completion_price_per_mtok is not None:
        return config.prompt_price_per_mtok, config.completion_price_per_mtok
    model = config.model_spec().model_id.lower()
    matches = [prefix for prefix in PRICES if model.startswith(prefix)]
    return PRICES[max(matches, key=len)] if matches else None


def _error_text(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        return str(body.get("message") or body)[:300]
    return str(getattr(exc, "message", exc))[:300]
