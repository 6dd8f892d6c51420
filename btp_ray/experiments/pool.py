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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from btp_ray.data.types import Problem
from btp_ray.io import atomic_write_json
from btp_ray.pipeline.records import STUDY_POOL, TestedCandidate
from btp_ray.pipeline.steps import Collected, collect
from btp_ray.replay import Experience

# What a pool's digest leaves out of each entry: how long its tests took, which differs between identical pools.
_NOT_CONTENT = ("test_wall_s",)


def _content(entry: TestedCandidate) -> dict[str, Any]:
    line = entry.to_line()
    for key in _NOT_CONTENT:
        line.pop(key)
    return line


@dataclass(frozen=True)
class CandidatePool:
    """Candidates of ``problem_ids`` sampled with ``generation``, tested (entries in problem order, then rank)."""

    generation: dict[str, Any]
    problem_ids: tuple[str, ...]
    entries: tuple[TestedCandidate, ...]

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
                "entries": [_content(e) for e in self.entries],
            },
            sort_keys=True,
            ensure_ascii=True,
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def experiences(self, sources: Sequence[str] | None = None) -> list[Experience]:
        """Replay records of the pool's entries (only those from ``sources``, when given). The pool is timeless: every
        record has the same creation time, so arms never differ by insertion order."""
        return [
            entry.experience(created_at=0.0)
            for entry in self.entries
            if sources is None or entry.candidate.source in sources
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
                    "mean_possibility": _mean(
                        [e.candidate.possibility for e in entries if e.candidate.possibility is not None]
                    ),
                }
                for source in sorted({e.candidate.source for e in self.entries})
                for entries in [[e for e in self.entries if e.candidate.source == source]]
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
                "entries": [e.to_line() for e in self.entries],
            },
        )
        return path

    @classmethod
    def load(cls, path: str | Path) -> CandidatePool:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        pool = cls(
            generation=data["generation"],
            problem_ids=tuple(data["problem_ids"]),
            entries=tuple(TestedCandidate.from_line(e) for e in data["entries"]),
        )
        if data.get("digest") not in (None, pool.digest):
            raise ValueError(f"{path}: the pool's content does not match its recorded digest (file edited?)")
        return pool


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def build_pool(
    source: Any, executor: Any, problems: Sequence[Problem], params: Any, *, batch_size: int
) -> tuple[CandidatePool, Collected]:
    """Sample and test ``problems`` once (the pipeline's step); returns the pool and what it was collected from."""
    collected = collect(source, executor, problems, params, batch_size=batch_size, phase=STUDY_POOL, kind="pool")
    return pool_of(problems, collected.outcomes, params.to_dict()), collected


def pool_of(
    problems: Sequence[Problem], outcomes: dict[str, list[TestedCandidate]], generation: dict[str, Any]
) -> CandidatePool:
    """The pool of ``problems``' tested candidates (``outcomes`` by task id, each problem's by rank)."""
    entries = [t for p in problems for t in sorted(outcomes[p.task_id], key=lambda t: t.candidate.rank)]
    return CandidatePool(generation=generation, problem_ids=tuple(p.task_id for p in problems), entries=tuple(entries))
