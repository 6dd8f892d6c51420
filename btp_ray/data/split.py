"""A deterministic, seeded train/eval split with disjoint task ids, so fine-tuning never trains on the problems it is
evaluated on unless the user asks for it.

The order is decided by a keyed hash of each task id (not by the list's order or Python's ``hash``), so the same seed
gives the same split on every machine, and adding problems to a dataset moves no existing problem across the split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from btp_ray.data.types import Problem


@dataclass(frozen=True)
class Split:
    train: list[Problem]
    eval: list[Problem]

    @property
    def train_ids(self) -> list[str]:
        return [p.task_id for p in self.train]

    @property
    def eval_ids(self) -> list[str]:
        return [p.task_id for p in self.eval]


def _key(task_id: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{task_id}".encode()).hexdigest()


def split_problems(
    problems: Sequence[Problem],
    *,
    eval_fraction: float = 0.5,
    n_eval: int | None = None,
    seed: int = 0,
    overlap: bool = False,
) -> Split:
    """Split ``problems`` into disjoint train and eval lists (each in the input's order).

    ``n_eval`` (a count) wins over ``eval_fraction``. With ``overlap=True`` both lists are all problems: the
    explicit opt-in to evaluate on the training problems.
    """
    ids = [p.task_id for p in problems]
    if len(set(ids)) != len(ids):
        raise ValueError("split_problems: task ids must be unique")
    if overlap:
        return Split(train=list(problems), eval=list(problems))
    if n_eval is None:
        if not 0.0 <= eval_fraction <= 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1], got {eval_fraction}")
        n_eval = round(len(problems) * eval_fraction)
    if not 0 <= n_eval <= len(problems):
        raise ValueError(f"n_eval must be in [0, {len(problems)}], got {n_eval}")
    ranked = sorted(ids, key=lambda task_id: _key(task_id, seed))
    eval_ids = set(ranked[:n_eval])
    return Split(
        train=[p for p in problems if p.task_id not in eval_ids],
        eval=[p for p in problems if p.task_id in eval_ids],
    )
