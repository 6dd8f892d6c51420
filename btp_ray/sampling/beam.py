"""Beam-search bookkeeping that reproduces transformers' ``generate(num_beams=k, early_stopping=True)`` one step at a
time, independent of any engine: the engine supplies, for every live beam, the top log-probs of its next token, and
:class:`BeamProblem` decides which continuations survive, which finish, and when the problem is done.

The rules are those of ``GenerationMixin._beam_search`` (transformers 5):

* each step keeps the ``max(2, 1 + number of EOS ids) * k`` best continuations of all live beams by summed log-prob
  (so every beam only needs that many top log-probs from the engine);
* a continuation that ends with EOS, completes a stop string or reaches ``max_new_tokens`` is *finished*; it joins
  the finished hypotheses only if it is among the first ``k`` of those continuations, scored
  ``sum_logprob / generated_length ** length_penalty`` (the EOS token counted), and only while fewer than ``k``
  hypotheses are finished;
* the first ``k`` unfinished continuations are the next live beams;
* the problem is done when ``k`` hypotheses are finished (``early_stopping=True``) or at ``max_new_tokens``.

Beams hold their tokens and log-probs in numpy arrays sized once per problem, so extending a beam is a copy of a
small array rather than a growing Python list, and only the ``max(2, 1 + eos) * k`` best continuations of a step are
ever materialised (not ``k * vocabulary`` or ``k * 2k`` beams).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Beam:
    """One hypothesis: ``length`` generated tokens (and their log-probs) and their summed log-prob.

    ``handle`` is the engine's (e.g. the vLLM request that computes this beam's next-token distribution); the
    bookkeeping never looks at it.
    """

    tokens: np.ndarray
    logprobs: np.ndarray
    length: int
    sum_logprob: float
    handle: Any = None

    @property
    def token_list(self) -> list[int]:
        return self.tokens[: self.length].tolist()

    @property
    def logprob_list(self) -> list[float]:
        return self.logprobs[: self.length].tolist()


@dataclass(frozen=True)
class Continuation:
    """A live beam extended by one token; ``parent`` indexes the live beams the step was given."""

    beam: Beam
    parent: int
    token: int


@dataclass(frozen=True)
class FinishedBeam:
    """A finished hypothesis and its beam score (``sum_logprob / length ** length_penalty``)."""

    score: float
    beam: Beam


@dataclass
class BeamProblem:
    """The beam search of one prompt. Call :meth:`step` with one next-token distribution per live beam."""

    num_beams: int
    max_new_tokens: int
    eos_ids: frozenset[int]
    length_penalty: float = 1.0
    stop_hit: Callable[[Beam, int], bool] | None = None
    live: list[Beam] = field(init=False)
    finished: list[FinishedBeam] = field(init=False, default_factory=list)
    done: bool = field(init=False, default=False)
    steps: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if self.num_beams < 1 or self.max_new_tokens < 1:
            raise ValueError("BeamProblem needs num_beams >= 1 and max_new_tokens >= 1")
        root = Beam(
            tokens=np.zeros(self.max_new_tokens, dtype=np.int64),
            logprobs=np.zeros(self.max_new_tokens, dtype=np.float64),
            length=0,
            sum_logprob=0.0,
        )
        self.live = [root]

    @property
    def candidates_per_step(self) -> int:
        """How many continuations a step keeps, hence how many top log-probs each live beam needs."""
        return max(2, 1 + len(self.eos_ids)) * self.num_beams

    def step(self, distributions: Sequence[Mapping[int, float]]) -> list[Continuation]:
        """Advance by one token. ``distributions[i]`` maps token id to log-prob for live beam ``i`` (at least its
        :attr:`candidates_per_step` most likely tokens). Returns the continuations that are the new live beams."""
        if self.done:
            raise RuntimeError("BeamProblem.step called after the search finished")
        if len(distributions) != len(self.live):
            raise ValueError(f"one distribution per live beam: {len(self.live)} beams, {len(distributions)} given")
        keep = self.candidates_per_step
        scored = (
            (parent.sum_logprob + logprob, index, token, logprob)
            for index, (parent, distribution) in enumerate(zip(self.live, distributions, strict=True))
            for token, logprob in distribution.items()
        )
        # Best first; ties go to the earlier beam, then the more likely token (an arbitrary but fixed order).
        best = heapq.nlargest(keep, scored, key=lambda item: (item[0], -item[1], item[3]))
        length = self.live[0].length + 1
        last_step = length >= self.max_new_tokens
        full = len(self.finished) >= self.num_beams
        new_live: list[Continuation] = []
        newly_finished: list[FinishedBeam] = []
        for position, (total, parent_index, token, logprob) in enumerate(best):
            parent = self.live[parent_index]
            ends = last_step or token in self.eos_ids or (self.stop_hit is not None and self.stop_hit(parent, token))
            if ends:
                if position < self.num_beams and not full:
                    beam = _extend(parent, token, logprob, total)
                    newly_finished.append(FinishedBeam(total / length**self.length_penalty, beam))
            elif len(new_live) < self.num_beams:
                new_live.append(Continuation(_extend(parent, token, logprob, total), parent_index, token))
        if newly_finished:
            merged = self.finished + newly_finished
            merged.sort(key=lambda item: -item.score)  # stable: earlier hypotheses win ties
            self.finished = merged[: self.num_beams]
        self.steps += 1
        self.live = [c.beam for c in new_live]
        self.done = last_step or len(self.finished) >= self.num_beams or not self.live
        return new_live

    def results(self) -> list[FinishedBeam]:
        """The finished hypotheses, best first (the live beams too if the search stopped without any)."""
        if self.finished:
            return sorted(self.finished, key=lambda item: -item.score)
        return [
            FinishedBeam(beam.sum_logprob / max(beam.length, 1) ** self.length_penalty, beam)
            for beam in sorted(self.live, key=lambda beam: -beam.sum_logprob)
        ]


def _extend(parent: Beam, token: int, logprob: float, total: float) -> Beam:
    tokens = parent.tokens.copy()
    logprobs = parent.logprobs.copy()
    tokens[parent.length] = token
    logprobs[parent.length] = logprob
    return Beam(tokens=tokens, logprobs=logprobs, length=parent.length + 1, sum_logprob=total)


def stop_string_checker(
    stop: Sequence[str], decode: Callable[[Sequence[int]], str]
) -> Callable[[Beam, int], bool] | None:
    """A ``stop_hit`` for :class:`BeamProblem`: does appending ``token`` complete one of the ``stop`` strings?

    Live beams never contain a stop string (a continuation that completes one is finished), so only the tail whose
    text can hold a stop string is decoded: as many trailing tokens as the longest stop string has characters.
    """
    if not stop:
        return None
    window = max(len(s) for s in stop)

    def hit(parent: Beam, token: int) -> bool:
        start = max(0, parent.length - window)
        text = decode([*parent.tokens[start : parent.length].tolist(), token])
        return any(s in text for s in stop)

    return hit
