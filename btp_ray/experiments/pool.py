"""The shared candidate pool: the training problems sampled once and tested once, kept with every candidate's
possibility inputs and per-test results, so that study arms differ only in what they isolate (the replay strategy,
a hyperparameter) and never in the data they start from.

A pool has a content digest over its generation settings and entries (not over timestamps): every arm records the
digest of the pool it drew from, and the same config, seed and backend give the same pool, hence the same digest.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from btp_ray.data.types import Problem
from btp_ray.io import atomic_write_json
from btp_ray.replay import Experience


@dataclass(frozen=True)
class PoolEntry:
    """One tested candidate. ``per_test`` is empty when the program never ran its tests (it did not load)."""

    task_id: str
    rank: int
    program: str
    per_test: tuple[bool, ...]
    num_tests: int
    num_tokens: int
    mean_logprob: float | None
    possibility: float | None
    status: str
    sampler: str
    source: str = "model"  # Candidate.source: model, samples, reference, incorrect_reference

    def __post_init__(self) -> None:
        object.__setattr__(self, "per_test", tuple(bool(v) for v in self.per_test))
        if self.per_test and len(self.per_test) != self.num_tests:
            raise ValueError(f"{self.task_id}: per_test has {len(self.per_test)} results for {self.num_tests} tests")

    @property
    def pass_rate(self) -> float:
        return sum(self.per_test) / self.num_tests if self.num_tests else 0.0

    @property
    def passed(self) -> bool:
        return self.num_tests > 0 and len(self.per_test) == self.num_tests and all(self.per_test)

    def to_experience(self, problem: Problem) -> Experience:
        """The replay record (the buffer derives possibility and P2Value with its own α)."""
        per_test = self.per_test or tuple(False for _ in range(self.num_tests))
        return Experience(
            problem_id=self.task_id,
            code=self.program,
            per_test=per_test,
            prompt=problem.prompt,
            source_model=self.sampler,
            iteration=0,
            token_count=self.num_tokens,
            mean_token_logprob=self.mean_logprob,
            created_at=0.0,  # the pool is timeless: arms must not differ by insertion times
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["per_test"] = list(self.per_test)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PoolEntry:
        return cls(**{**data, "per_test": tuple(data["per_test"])})


@dataclass(frozen=True)
class CandidatePool:
    """Candidates of ``problem_ids`` sampled with ``generation`` (entries in problem order, then rank)."""

    generation: dict[str, Any]
    problem_ids: tuple[str, ...]
    entries: tuple[PoolEntry, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "problem_ids", tuple(self.problem_ids))
        object.__setattr__(self, "entries", tuple(self.entries))
        unknown = {e.task_id for e in self.entries} - set(self.problem_ids)
        if unknown:
            raise ValueError(f"pool entries for problems not in the pool: {sorted(unknown)}")

    @property
    def digest(self) -> str:
        payload = json.dumps(
            {
                "generation": self.generation,
                "problems": list(self.problem_ids),
                "entries": [e.to_dict() for e in self.entries],
            },
            sort_keys=True,
            ensure_ascii=True,
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def experiences(self, problems: Sequence[Problem], sources: Sequence[str] | None = None) -> list[Experience]:
        """Replay records of the pool's entries (only those from ``sources``, when given)."""
        by_id = {p.task_id: p for p in problems}
        missing = set(self.problem_ids) - set(by_id)
        if missing:
            raise ValueError(f"the pool needs the problems {sorted(missing)}")
        return [
            entry.to_experience(by_id[entry.task_id])
            for entry in self.entries
            if sources is None or entry.source in sources
        ]

    def summary(self) -> dict[str, Any]:
        passing = [e for e in self.entries if e.passed]
        return {
            "digest": self.digest,
            "problems": len(self.problem_ids),
            "candidates": len(self.entries),
            "fully_passing": len(passing),
            "problems_with_a_full_pass": len({e.task_id for e in passing}),
            "mean_pass_rate": sum(e.pass_rate for e in self.entries) / len(self.entries) if self.entries else 0.0,
            "candidates_per_problem": self.generation.get("num_candidates"),
            "by_source": {
                source: {
                    "candidates": len(entries),
                    "fully_passing": sum(1 for e in entries if e.passed),
                    "mean_pass_rate": sum(e.pass_rate for e in entries) / len(entries),
                    "mean_possibility": _mean([e.possibility for e in entries if e.possibility is not None]),
                }
                for source in sorted({e.source for e in self.entries})
                for entries in [[e for e in self.entries if e.source == source]]
            },
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        atomic_write_json(
            path,
            {
                "digest": self.digest,
                "generation": self.generation,
                "problem_ids": list(self.problem_ids),
                "entries": [e.to_dict() for e in self.entries],
            },
        )
        return path

    @classmethod
    def load(cls, path: str | Path) -> CandidatePool:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        pool = cls(
            generation=data["generation"],
            problem_ids=tuple(data["problem_ids"]),
            entries=tuple(PoolEntry.from_dict(e) for e in data["entries"]),
        )
        if data.get("digest") not in (None, pool.digest):
            raise ValueError(f"{path}: the pool's content does not match its recorded digest (file edited?)")
        return pool

    @classmethod
    def from_outcomes(
        cls, problems: Sequence[Problem], outcomes: dict[str, list[Any]], generation: dict[str, Any]
    ) -> CandidatePool:
        """Build from ``{task_id: [(Candidate, ExecutionResult), ...]}`` (see :func:`.common.collect`)."""
        entries = []
        for problem in problems:
            for candidate, result in outcomes[problem.task_id]:
                entries.append(
                    PoolEntry(
                        task_id=problem.task_id,
                        rank=candidate.rank,
                        program=candidate.program,
                        per_test=tuple(result.per_test),
                        num_tests=len(problem.tests),
                        num_tokens=candidate.num_tokens,
                        mean_logprob=candidate.mean_logprob,
                        possibility=candidate.possibility,
                        status=result.status.value,
                        sampler=str(candidate.sampler),
                        source=candidate.source,
                    )
                )
        return cls(generation=generation, problem_ids=tuple(p.task_id for p in problems), entries=tuple(entries))


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def build_pool(
    sampler: Any, executor: Any, problems: Sequence[Problem], params: Any, *, batch_size: int
) -> tuple[CandidatePool, Any]:
    """Sample and test ``problems`` once; returns the pool and the :class:`~.common.Collected` it came from."""
    from btp_ray.experiments.common import collect

    collected = collect(sampler, executor, problems, params, batch_size=batch_size)
    return CandidatePool.from_outcomes(problems, collected.outcomes, params.to_dict()), collected
