"""The one record of a tested program, :class:`TestedCandidate`, and the two conversions that leave it.

A program's whole path through btp-ray is Problem → :class:`~btp_ray.sampling.Candidate` (what a sampler or a program
source returned) → :class:`TestedCandidate` (the candidate, its sandbox verdict with per-test statuses, where and
when it was tested) → :class:`~btp_ray.replay.Experience` (the replay record) → :class:`TrainingExample`.

Each line of a run's ``candidates.jsonl`` is exactly one ``TestedCandidate``, written by :meth:`TestedCandidate.to_line`
and read back by :meth:`TestedCandidate.from_line`; the replay buffer's records, the evaluation summaries, a study's
candidate pool and the fine-tuning examples are all built from it. Its P2Value is the run's (α and possibility mode,
:func:`btp_ray.replay.scored`): the value logged is the value the buffer samples by.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from btp_ray.data.types import Problem
from btp_ray.execution import ExecutionResult, ExecutionStatus
from btp_ray.replay import Experience, PossibilityMode, scored
from btp_ray.sampling import Candidate, FinishReason, SamplerIdentity
from btp_ray.sampling.base import user_message

# Where a program was tested: for the replay pool of a BTP iteration, a held-out evaluation, a study's pool, the
# sample-and-filter baseline.
BTP_POOL = "btp"
HELD_OUT = "eval"
STUDY_POOL = "pool"
BASELINE = "baseline"


@dataclass(frozen=True)
class TestedCandidate:
    """A candidate program with its sandbox verdict.

    ``num_tests`` is the problem's test count: a program that never reached its tests (it did not load) has an empty
    ``result.per_test`` and counts as failing every test. ``prompt`` is the problem as a completion model is shown it
    (the dataset's prompt) and ``chat_prompt`` as a chat model's user turn shows it; fine-tuning uses the one in the
    learner's format (:func:`training_examples`), so no later step goes back to the problem.
    ``p2value`` is set for programs offered to the replay buffer (see :meth:`scored`), ``None`` otherwise.
    """

    __test__ = False  # not a pytest class, despite its name

    candidate: Candidate
    result: ExecutionResult
    num_tests: int
    prompt: str = ""
    chat_prompt: str = ""
    iteration: int = 0
    phase: str = BTP_POOL
    kind: str = "beam"  # beam / sample / greedy: how the candidate was drawn
    p2value: float | None = None

    def __post_init__(self) -> None:
        if self.result.per_test and len(self.result.per_test) != self.num_tests:
            raise ValueError(
                f"{self.task_id}: {len(self.result.per_test)} test results for a problem with {self.num_tests} tests"
            )

    @classmethod
    def of(cls, problem: Problem, candidate: Candidate, result: ExecutionResult, **where: Any) -> TestedCandidate:
        """The record of ``candidate`` of ``problem`` tested into ``result`` (``where``: iteration, phase, kind)."""
        return cls(
            candidate=candidate,
            result=result,
            num_tests=len(problem.tests),
            prompt=problem.prompt,
            chat_prompt=user_message(problem),
            **where,
        )

    @property
    def task_id(self) -> str:
        return self.candidate.task_id

    @property
    def per_test(self) -> tuple[bool, ...]:
        """One verdict per test of the problem (all failed when the program never reached its tests)."""
        return self.result.per_test or (False,) * self.num_tests

    @property
    def pass_rate(self) -> float:
        return sum(self.per_test) / self.num_tests if self.num_tests else 0.0

    @property
    def passed(self) -> bool:
        """Every test passed."""
        return self.num_tests > 0 and all(self.per_test)

    def experience(self, created_at: float | None = None) -> Experience:
        """The replay record (a study's pool passes a fixed ``created_at``: arms must not differ by insertion times)."""
        timing = {} if created_at is None else {"created_at": created_at}
        return Experience(
            problem_id=self.task_id,
            code=self.candidate.program,
            per_test=self.per_test,
            prompt=self.prompt,
            chat_prompt=self.chat_prompt,
            source_model=str(self.candidate.sampler),
            iteration=self.iteration,
            token_count=self.candidate.num_tokens,
            mean_token_logprob=self.candidate.mean_logprob,
            **timing,
        )

    def scored(self, alpha: float, possibility: PossibilityMode | str) -> TestedCandidate:
        """This record with the P2Value the replay buffer of a run with ``alpha`` and ``possibility`` samples it by."""
        return replace(self, p2value=scored(self.experience(), alpha, possibility)[1])

    # -- candidates.jsonl ----------------------------------------------------------------------------------------
    def to_line(self) -> dict[str, Any]:
        """One line of ``candidates.jsonl`` (JSON-ready)."""
        candidate, result = self.candidate, self.result
        return {
            "iteration": self.iteration,
            "phase": self.phase,
            "kind": self.kind,
            "task_id": self.task_id,
            "rank": candidate.rank,
            "sampler": candidate.sampler.to_dict(),
            "prompt": self.prompt,
            "chat_prompt": self.chat_prompt,
            "program": candidate.program,
            "completion": candidate.completion,
            "num_tokens": candidate.num_tokens,
            "finish_reason": candidate.finish_reason.value,
            "sum_logprob": candidate.sum_logprob,
            "mean_logprob": candidate.mean_logprob,
            "possibility": candidate.possibility,
            "score": candidate.score,
            "source": candidate.source,
            "possibility_scorer": candidate.possibility_scorer,
            "status": result.status.value,
            "per_test": list(result.per_test),
            "per_test_status": [status.value for status in result.per_test_status],
            "num_tests": self.num_tests,
            "pass_rate": self.pass_rate,
            "passed": result.passed,
            "total": self.num_tests,
            "error": result.error,
            "test_wall_s": result.wall_s,
            "p2value": self.p2value,
        }

    @classmethod
    def from_line(cls, line: Mapping[str, Any]) -> TestedCandidate:
        """The inverse of :meth:`to_line` (which keeps everything but the token ids and per-token log-probs)."""
        sampler = SamplerIdentity.from_dict(line["sampler"])
        scorer = line.get("possibility_scorer")
        candidate = Candidate(
            task_id=line["task_id"],
            completion=line["completion"],
            program=line["program"],
            num_tokens=line["num_tokens"],
            finish_reason=FinishReason(line["finish_reason"]),
            sampler=sampler,
            rank=line["rank"],
            sum_logprob=line.get("sum_logprob"),
            mean_logprob=line["mean_logprob"],
            possibility=line["possibility"],
            score=line["score"],
            source=line.get("source", "model"),
            scored_by=None if scorer == str(sampler) else scorer,  # the sampler's own log-probs
        )
        result = ExecutionResult(
            status=ExecutionStatus(line["status"]),
            per_test=tuple(line["per_test"]),
            per_test_status=tuple(ExecutionStatus(s) for s in line.get("per_test_status", ())),
            error=line["error"],
            wall_s=line["test_wall_s"],
        )
        return cls(
            candidate=candidate,
            result=result,
            num_tests=line.get("num_tests", line["total"]),
            prompt=line.get("prompt", ""),
            chat_prompt=line.get("chat_prompt", ""),
            iteration=line["iteration"],
            phase=line["phase"],
            kind=line["kind"],
            p2value=line["p2value"],
        )


def records_of(batch: Any, **where: Any) -> list[TestedCandidate]:
    """The records of one tested batch (:class:`~btp_ray.pipeline.stream.TestedBatch`), problems in order, then
    candidates by rank; ``where`` gives iteration, phase and kind."""
    records = []
    for problem, candidates, results in zip(batch.problems, batch.candidates, batch.results, strict=True):
        pairs = sorted(zip(candidates, results, strict=True), key=lambda pair: pair[0].rank)
        records.extend(TestedCandidate.of(problem, candidate, result, **where) for candidate, result in pairs)
    return records


def training_examples(experiences: Sequence[Experience], *, chat: bool) -> list[Any]:
    """Fine-tuning examples of drawn replay records, on exactly the prompt the samplers show the model: the record's
    chat user turn when the learner trains in chat format, its raw prompt otherwise; weighted by P2Value."""
    from btp_ray.training import TrainingExample

    return [
        TrainingExample(
            prompt=(e.chat_prompt or e.prompt) if chat else e.prompt,
            program=e.code,
            weight=float(e.p2value or 0.0),
            problem_id=e.problem_id,
        )
        for e in experiences
    ]


def learner_chats(learner: Any) -> bool:
    """Whether ``learner`` (a ``Learner`` or ``RayLearner``) trains in chat format (its tokenizer has a template)."""
    from btp_ray.training import PromptFormat
    from btp_ray.training.dataset import resolve_prompt_format

    return resolve_prompt_format(learner.config.prompt_format, learner.tokenizer) is PromptFormat.CHAT
