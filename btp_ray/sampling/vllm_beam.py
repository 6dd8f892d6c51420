"""btp-ray's beam search on a running vLLM engine: every problem and beam of a call in one engine batch, each live
beam a long-lived vLLM request that decodes greedily with its top log-probs, so a step costs one decode token per beam.

Why not ``LLM.beam_search``: vLLM implements it as a Python loop of one-token ``generate`` calls. Every step submits
each beam as a *new* request carrying its whole prefix; prefix caching only reuses full KV blocks (128 tokens on CPU),
so every step re-computes up to a block of tokens per beam, and ``k * 2k`` beam objects with copied lists are built.

How this works instead (:class:`EngineBeamSearch`):

* one request per live beam, ``temperature=0``, ``logprobs=candidates_per_step``, ``max_tokens`` = what is left, so
  the engine keeps decoding it: its next output is the next-token distribution of the beam *and* its greedy token;
* :class:`~btp_ray.sampling.beam.BeamProblem` (transformers' rules) picks the continuations once every live beam of
  the problem has its distribution;
* a continuation that appends its parent's greedy token *inherits* the parent's request (no new work at all); any
  other continuation (a second child, or a non-greedy token) becomes a new request whose prompt is the prompt plus
  the beam's tokens: prefix caching serves its full KV blocks, so only the last partial block is recomputed;
* requests whose beam died are aborted at once; a problem whose search is done aborts all of its requests.

Outputs are buffered per request, so the driver is correct whether the engine core runs in this process (one engine
step per ``step()``, lockstep) or in its own process (requests may run ahead; their extra greedy tokens are used
when the beam stays greedy and dropped otherwise).
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from btp_ray.sampling.beam import Beam, BeamProblem, FinishedBeam, stop_string_checker

logger = logging.getLogger(__name__)


@dataclass
class _Request:
    """One engine request: outputs not yet consumed (greedy token, {token: log-prob}) and whether it ended."""

    problem: int
    outputs: deque = field(default_factory=deque)
    finished: bool = False


@dataclass
class BeamSearchStats:
    """Counters of one call: engine steps, requests started (one per problem plus one per fork), forks avoided."""

    engine_steps: int = 0
    requests: int = 0
    inherited: int = 0
    forked: int = 0

    def to_dict(self) -> dict[str, int]:
        return {
            "engine_steps": self.engine_steps,
            "requests": self.requests,
            "inherited": self.inherited,
            "forked": self.forked,
        }


class EngineBeamSearch:
    """Beam search over a vLLM ``LLMEngine`` (``LLM.llm_engine``); the engine must be idle when :meth:`run` starts."""

    def __init__(self, engine: Any, *, lora_request: Any = None) -> None:
        self.engine = engine
        self.lora_request = lora_request
        self._ids = itertools.count()
        self.stats = BeamSearchStats()

    def run(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        num_beams: int,
        max_new_tokens: int,
        eos_ids: frozenset[int],
        length_penalty: float = 1.0,
        stop: Sequence[str] = (),
        decode: Callable[[Sequence[int]], str] | None = None,
    ) -> list[list[FinishedBeam]]:
        """The finished beams of every prompt, best first (up to ``num_beams`` each)."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        if stop and decode is None:
            raise ValueError("EngineBeamSearch.run needs decode to check stop strings")
        stop_hit = stop_string_checker(stop, decode) if stop and decode is not None else None
        problems = [BeamProblem(num_beams, max_new_tokens, eos_ids, length_penalty, stop_hit=stop_hit) for _ in prompts]
        width = problems[0].candidates_per_step if problems else 0
        self.stats = BeamSearchStats()
        requests: dict[str, _Request] = {}

        def start(problem_index: int, beam: Beam) -> None:
            request_id = f"btp-beam-{next(self._ids)}"
            tokens = [*prompts[problem_index], *beam.token_list]
            params = SamplingParams(
                temperature=0.0,
                max_tokens=max_new_tokens - beam.length,
                logprobs=width,
                ignore_eos=True,  # EOS is the beam search's decision, not the request's
                detokenize=False,
                output_kind=RequestOutputKind.DELTA,
            )
            self.engine.add_request(request_id, {"prompt_token_ids": tokens}, params, lora_request=self.lora_request)
            requests[request_id] = _Request(problem_index)
            beam.handle = request_id
            self.stats.requests += 1

        def abort(request_ids: list[str]) -> None:
            live = [r for r in request_ids if r in requests]
            for request_id in live:
                del requests[request_id]
            if live:
                self.engine.abort_request(live)

        for index, problem in enumerate(problems):
            start(index, problem.live[0])
        pending = set(range(len(problems)))
        try:
            while pending:
                outputs = self.engine.step()
                self.stats.engine_steps += 1
                if not outputs and not self.engine.has_unfinished_requests():
                    raise RuntimeError("vLLM engine has no requests left but beam search is not done")
                for output in outputs:
                    request = requests.get(output.request_id)
                    if request is None:  # aborted after it was scheduled
                        continue
                    completion = output.outputs[0]
                    request.outputs.extend(_positions(completion.token_ids, completion.logprobs))
                    request.finished = output.finished
                for index in list(pending):
                    problem = problems[index]
                    if any(not requests[beam.handle].outputs for beam in problem.live):
                        continue  # a beam's distribution is still being computed (a new request's prefill)
                    self._advance(index, problem, requests, start, abort)
                    if problem.done:
                        pending.discard(index)
                        abort([beam.handle for beam in problem.live])
        finally:
            abort(list(requests))
        return [problem.results() for problem in problems]

    def _advance(
        self,
        index: int,
        problem: BeamProblem,
        requests: dict[str, _Request],
        start: Callable[[int, Beam], None],
        abort: Callable[[list[str]], None],
    ) -> None:
        parents = list(problem.live)
        greedy: list[int] = []
        distributions = []
        for beam in parents:
            token, distribution = requests[beam.handle].outputs.popleft()
            greedy.append(token)
            distributions.append(distribution)
        continuations = problem.step(distributions)
        inherited: set[int] = set()
        for continuation in continuations:
            parent = continuation.parent
            request = requests[parents[parent].handle]
            can_inherit = (
                parent not in inherited
                and continuation.token == greedy[parent]
                and (request.outputs or not request.finished)
            )
            if can_inherit and not problem.done:
                continuation.beam.handle = parents[parent].handle
                inherited.add(parent)
                self.stats.inherited += 1
            elif not problem.done:
                start(index, continuation.beam)
                self.stats.forked += 1
        abort([parents[i].handle for i in range(len(parents)) if i not in inherited])


def _positions(token_ids: Sequence[int], logprobs: Any) -> list[tuple[int, dict[int, float]]]:
    """(sampled token, {token: log-prob}) per generated position, from a list of dicts or vLLM's FlatLogprobs."""
    if logprobs is None:
        raise RuntimeError("vLLM returned no logprobs for a beam-search request")
    starts = getattr(logprobs, "start_indices", None)
    if starts is not None:  # FlatLogprobs: flat lists, no per-position dict objects
        ends, ids, values = logprobs.end_indices, logprobs.token_ids, logprobs.logprobs
        return [
            (token, dict(zip(ids[begin:end], values[begin:end], strict=True)))
            for token, begin, end in zip(token_ids, starts, ends, strict=True)
        ]
    return [
        (token, {candidate: entry.logprob for candidate, entry in position.items()})
        for token, position in zip(token_ids, logprobs, strict=True)
    ]
