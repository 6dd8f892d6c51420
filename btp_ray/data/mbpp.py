"""MBPP (Austin et al. 2021): the original release (974 tasks) and the sanitized subset (427 tasks).

No package ships MBPP, so it is read from, in order: an explicit ``path``, ``$BTP_DATA_DIR/mbpp/``, or the Hugging
Face hub (``google-research-datasets/mbpp``, for users with internet). Splits follow the paper's task-id ranges:
prompt 1–10, test 11–510, validation 511–600, train 601–974 (the sanitized subset keeps the same ranges).
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from btp_ray.data.errors import DatasetError
from btp_ray.data.records import read_hub, read_records, require
from btp_ray.data.types import Problem, TestCase

FULL = "mbpp"
SANITIZED = "mbpp-sanitized"
HUB_ID = "google-research-datasets/mbpp"
FILENAMES = {FULL: "mbpp.jsonl", SANITIZED: "sanitized-mbpp.json"}
SPLITS: dict[str, range] = {
    "prompt": range(1, 11),
    "test": range(11, 511),
    "validation": range(511, 601),
    "train": range(601, 975),
}
PROMPT_TEMPLATE = (
    "You are an expert Python programmer, and here is your task: {text} Your code should pass these tests:\n\n{tests}\n"
)


def _split_of(task_id: int) -> str | None:
    return next((name for name, ids in SPLITS.items() if task_id in ids), None)


def _entry_point(code: str, tests: Iterable[str]) -> str | None:
    """The function the tests call that the reference code defines."""
    try:
        defined = {n.name for n in ast.walk(ast.parse(code)) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    except SyntaxError:
        defined = set()
    for test in tests:
        try:
            tree = ast.parse(test)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in defined:
                return node.func.id
    return None


def _row_to_problem(name: str, row: dict[str, Any], where: dict[str, Any]) -> Problem:
    text_key = "prompt" if name == SANITIZED else "text"
    for key, kind in (("task_id", int), (text_key, str), ("code", str), ("test_list", list)):
        require(name, row, where, key, kind)
    tests = [t for t in row["test_list"] if isinstance(t, str) and t.strip()]
    if len(tests) != len(row["test_list"]) or not tests:
        raise DatasetError(name, "every test must be a non-empty assert string", field="test_list", **where)
    if name == SANITIZED:
        setup = "\n".join(row.get("test_imports") or [])
    else:
        setup = (row.get("test_setup_code") or "").replace("\r\n", "\n")
    code = row["code"].replace("\r\n", "\n")
    task_id = row["task_id"]
    return Problem(
        task_id=f"{'MbppSanitized' if name == SANITIZED else 'Mbpp'}/{task_id}",
        prompt=PROMPT_TEMPLATE.format(text=row[text_key].strip(), tests="\n".join(tests)),
        tests=tuple(TestCase.assertion(t) for t in tests),
        entry_point=_entry_point(code, tests),
        canonical_solution=code,
        test_setup=setup,
        source=name,
        metadata={
            "task_id": task_id,
            "split": _split_of(task_id),
            "text": row[text_key],
            "challenge_test_list": list(row.get("challenge_test_list") or []),
        },
    )


def find_local_file(name: str, path: str | Path | None = None) -> Path | None:
    """Where the MBPP file for ``name`` is on disk: ``path`` (file or directory), else ``$BTP_DATA_DIR``."""
    filename = FILENAMES[name]
    if path is not None:
        candidate = Path(path)
        if candidate.is_dir():
            for sub in (candidate / filename, candidate / "mbpp" / filename):
                if sub.is_file():
                    return sub
            raise DatasetError(
                name, f"directory has neither {filename} nor mbpp/{filename}; fix: {_fix(name)}", path=candidate
            )
        if not candidate.is_file():
            raise DatasetError(name, f"file not found; fix: {_fix(name)}", path=candidate)
        return candidate
    data_dir = os.environ.get("BTP_DATA_DIR")
    if data_dir:
        for sub in (Path(data_dir) / "mbpp" / filename, Path(data_dir) / filename):
            if sub.is_file():
                return sub
    return None


def _fix(name: str) -> str:
    filename = FILENAMES[name]
    return f"pass --data-path <{filename}, or a directory holding mbpp/{filename}> or set BTP_DATA_DIR to it"


def load_mbpp(name: str = FULL, *, split: str | None = None, path: str | Path | None = None) -> list[Problem]:
    """Load MBPP (``name`` = ``mbpp`` or ``mbpp-sanitized``), optionally one split, ordered by task id."""
    if name not in FILENAMES:
        raise DatasetError(name, f"unknown MBPP variant; use one of {sorted(FILENAMES)}")
    if split is not None and split not in SPLITS:
        raise DatasetError(name, f"unknown split {split!r}; use one of {sorted(SPLITS)}")
    local = find_local_file(name, path)
    if local is not None:
        rows = list(read_records(name, local))
    else:
        data_dir = os.environ.get("BTP_DATA_DIR")
        where = f"BTP_DATA_DIR={data_dir} has no mbpp/{FILENAMES[name]}" if data_dir else "BTP_DATA_DIR not set"
        tried = f"not found locally (no --data-path, {where})"
        config = "sanitized" if name == SANITIZED else "full"
        rows = read_hub(name, HUB_ID, config=config, tried=tried, fix=_fix(name))
        rows.sort(key=lambda item: item[0].get("task_id", 0))
    problems = []
    for row, where in rows:
        problem = _row_to_problem(name, row, where)
        if split is None or problem.metadata["split"] == split:
            problems.append(problem)
    return problems
