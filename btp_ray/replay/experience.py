"""The replay record (:class:`Experience`) and the P2Value score it is prioritised by.

P2Value = α·possibility + (1−α)·pass_rate (the BTP paper). *Possibility* is how likely the model found the program:

- ``"geometric"`` (default): exp(mean token log-prob), the per-token geometric mean probability, in (0, 1]. It is
  comparable across programs of different lengths.
- ``"product"``: exp(sum of token log-probs), the paper's literal product of token probabilities. It vanishes
  exponentially with length (a 200-token program at mean log-prob −0.1 scores 2e−9), so it ranks long programs last
  whatever their quality; offered for faithfulness and ablation only.

The original suite divided Hugging Face's already length-normalised beam score by the length a second time, so every
possibility came out ≈ 0.999 and carried no signal; here the mean log-prob is taken as given (it is the per-token
mean of the sampled tokens' log-probs) and exponentiated once.

When the possibility is unknown (API samplers that return no log-probs) ``possibility`` is ``None`` and the P2Value
falls back to the pass rate, for any α.
"""

from __future__ import annotations

import enum
import hashlib
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

DEFAULT_ALPHA = 0.5


class PossibilityMode(str, enum.Enum):
    """How a program's possibility is derived from its token log-probs."""

    GEOMETRIC = "geometric"  # exp(mean token log-prob)
    PRODUCT = "product"  # exp(sum of token log-probs) = exp(mean · token_count)


def _check_unit_interval(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    value = float(value)
    if not (0.0 <= value <= 1.0):  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return value


def check_alpha(alpha: float) -> float:
    """Validate the P2Value weight α ∈ [0, 1] and return it as a float."""
    return _check_unit_interval("alpha (the P2Value weight)", alpha)


def p2value(possibility: float | None, pass_rate: float, alpha: float = DEFAULT_ALPHA) -> float:
    """α·possibility + (1−α)·pass_rate; the pass rate alone when ``possibility`` is ``None``.

    Raises ``ValueError`` for a possibility or pass rate outside [0, 1] (or NaN) and for α outside [0, 1].
    """
    alpha = check_alpha(alpha)
    pass_rate = _check_unit_interval("pass_rate", pass_rate)
    if possibility is None:
        return pass_rate
    possibility = _check_unit_interval("possibility", possibility)
    return alpha * possibility + (1.0 - alpha) * pass_rate


def possibility_from_logprob(
    mean_token_logprob: float, token_count: int, mode: PossibilityMode | str = PossibilityMode.GEOMETRIC
) -> float:
    """The possibility of a program from the mean log-prob of its tokens (see the module docstring)."""
    mode = PossibilityMode(mode)
    if isinstance(mean_token_logprob, bool) or not isinstance(mean_token_logprob, (int, float)):
        raise ValueError(f"mean_token_logprob must be a number <= 0, got {mean_token_logprob!r}")
    if not (math.isfinite(mean_token_logprob) and mean_token_logprob <= 0.0):
        raise ValueError(f"mean_token_logprob must be finite and <= 0, got {mean_token_logprob!r}")
    if mode is PossibilityMode.GEOMETRIC:
        return math.exp(mean_token_logprob)
    if token_count <= 0:
        raise ValueError("possibility='product' needs token_count > 0")
    return math.exp(mean_token_logprob * token_count)


def scored(record: Experience, alpha: float, mode: PossibilityMode | str) -> tuple[float | None, float]:
    """``(possibility, P2Value)`` of ``record`` under a run's α and possibility mode: the one place both are
    computed for a tested program (the replay buffer samples by it, the candidate log records it)."""
    possibility = record.possibility
    if record.mean_token_logprob is not None:
        possibility = possibility_from_logprob(record.mean_token_logprob, record.token_count, mode)
    return possibility, p2value(possibility, record.pass_rate or 0.0, alpha)


def dedup_form(code: str) -> str:
    """The form under which two programs count as identical: line endings unified, trailing whitespace and blank
    lines dropped. Comments and indentation are kept: they change what the model is trained on."""
    lines = (line.rstrip() for line in code.replace("\r\n", "\n").replace("\r", "\n").split("\n"))
    return "\n".join(line for line in lines if line)


def dedup_key(problem_id: str, code: str) -> tuple[str, bytes]:
    """The de-duplication key of a (problem, program) pair."""
    return problem_id, hashlib.blake2b(dedup_form(code).encode("utf-8"), digest_size=16).digest()


@dataclass(frozen=True)
class Experience:
    """One candidate program with its scores. Frozen; ``to_dict``/``from_dict`` round-trip through JSON.

    ``pass_rate`` defaults to the fraction of ``per_test`` that passed; ``possibility`` defaults to
    exp(``mean_token_logprob``) when that is given, else ``None`` (unknown); ``p2value`` defaults to
    :func:`p2value` with α = 0.5. A :class:`~btp_ray.replay.ReplayBuffer` re-derives possibility and P2Value with
    its own configuration on ``add``, so the stored record always matches the buffer's α and possibility mode.
    """

    problem_id: str
    code: str
    per_test: tuple[bool, ...] = ()
    prompt: str = ""
    chat_prompt: str = ""  # the problem as a chat model's user turn shows it ("" when unknown: ``prompt`` is used)
    source_model: str = ""
    iteration: int = 0
    token_count: int = 0
    mean_token_logprob: float | None = None
    possibility: float | None = None
    pass_rate: float | None = None
    p2value: float | None = None
    created_at: float = field(default_factory=time.time)
    updated_at: float | None = None

    def __post_init__(self) -> None:
        set_field = object.__setattr__
        if not isinstance(self.problem_id, str) or not self.problem_id:
            raise ValueError(f"Experience.problem_id must be a non-empty string, got {self.problem_id!r}")
        for name in ("code", "prompt", "chat_prompt", "source_model"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"Experience.{name} must be a string, got {type(getattr(self, name)).__name__}")
        for name in ("iteration", "token_count"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"Experience.{name} must be an integer >= 0, got {value!r}")
        if isinstance(self.per_test, (str, bytes)) or not isinstance(self.per_test, Sequence):
            raise ValueError(f"Experience.per_test must be a sequence of bools, got {type(self.per_test).__name__}")
        per_test = tuple(self.per_test)
        if not all(isinstance(result, bool) or type(result).__name__ == "bool_" for result in per_test):
            raise ValueError("Experience.per_test must hold only bools (one per test case)")
        set_field(self, "per_test", tuple(bool(result) for result in per_test))

        if self.mean_token_logprob is not None:
            possibility = possibility_from_logprob(self.mean_token_logprob, self.token_count)
            set_field(self, "mean_token_logprob", float(self.mean_token_logprob))
            if self.possibility is None:
                set_field(self, "possibility", possibility)
        if self.possibility is not None:
            set_field(self, "possibility", _check_unit_interval("Experience.possibility", self.possibility))

        if self.pass_rate is None:
            if not self.per_test:
                raise ValueError("Experience needs per_test results or an explicit pass_rate")
            set_field(self, "pass_rate", sum(self.per_test) / len(self.per_test))
        else:
            set_field(self, "pass_rate", _check_unit_interval("Experience.pass_rate", self.pass_rate))

        if self.p2value is None:
            set_field(self, "p2value", p2value(self.possibility, self.pass_rate, DEFAULT_ALPHA))
        else:
            set_field(self, "p2value", _check_unit_interval("Experience.p2value", self.p2value))

        if isinstance(self.created_at, bool) or not isinstance(self.created_at, (int, float)):
            raise ValueError(f"Experience.created_at must be a POSIX timestamp, got {self.created_at!r}")
        if self.updated_at is None:
            set_field(self, "updated_at", float(self.created_at))

    @property
    def passed(self) -> bool:
        """True when every test passed."""
        return self.pass_rate == 1.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["per_test"] = list(self.per_test)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Experience:
        return cls(**{**data, "per_test": tuple(data.get("per_test", ()))})
