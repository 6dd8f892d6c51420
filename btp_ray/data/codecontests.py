"""CodeContests (Li et al. 2022, AlphaCode) in its public format (``deepmind/code_contests`` rows, as JSON Lines,
JSON or Parquet files, or from the hub). Tests are stdin/stdout pairs from the public, private and generated sets."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from btp_ray.data.errors import DatasetError
from btp_ray.data.records import Where, read_hub, read_records, require
from btp_ray.data.types import Problem, TestCase

DATASET = "codecontests"
HUB_ID = "deepmind/code_contests"
FIX = "pass --data-path <a CodeContests .jsonl, .json or .parquet file>"
TEST_SETS = ("public_tests", "private_tests", "generated_tests")
PYTHON3 = 3  # the dataset's language enum: 0 unknown, 1 Python 2, 2 C++, 3 Python 3, 4 Java
DIFFICULTY = {0: "unknown", 1: "easy", 2: "medium", 3: "hard", 4: "harder", 5: "hardest", 6: "external"}


def _tests_of(record: dict[str, Any], where: Where, key: str) -> list[TestCase]:
    block = record.get(key)
    if block is None:
        return []
    if (
        not isinstance(block, dict)
        or not isinstance(block.get("input"), list)
        or not isinstance(block.get("output"), list)
    ):
        raise DatasetError(DATASET, "expected {'input': [...], 'output': [...]}", field=key, **where)
    if len(block["input"]) != len(block["output"]):
        raise DatasetError(DATASET, "'input' and 'output' differ in length", field=key, **where)
    return [TestCase.stdio(str(i), str(o)) for i, o in zip(block["input"], block["output"], strict=True)]


def _python_solutions(record: dict[str, Any], key: str = "solutions") -> list[str]:
    """The Python 3 programs of ``record[key]`` (``solutions`` or ``incorrect_solutions``)."""
    block = record.get(key) or {}
    return [
        code
        for language, code in zip(block.get("language", []), block.get("solution", []), strict=False)
        if language == PYTHON3
    ]


def record_to_problem(record: dict[str, Any], where: Where, test_sets: Sequence[str]) -> Problem:
    name = require(DATASET, record, where, "name", str)
    description = require(DATASET, record, where, "description", str)
    tests = [case for key in test_sets for case in _tests_of(record, where, key)]
    if not tests:
        raise DatasetError(DATASET, f"no tests in {list(test_sets)}", **where)
    difficulty = record.get("difficulty")
    time_limit = record.get("time_limit") or {}
    solutions = _python_solutions(record)
    return Problem(
        task_id=f"CodeContests/{name}",
        prompt=description.strip() + "\n",
        tests=tuple(tests),
        entry_point=None,
        canonical_solution=solutions[0] if solutions else None,
        source=DATASET,
        difficulty=DIFFICULTY.get(difficulty, str(difficulty)) if difficulty is not None else None,
        metadata={
            "time_limit_s": (time_limit.get("seconds") or 0) + (time_limit.get("nanos") or 0) / 1e9 or None,
            "memory_limit_bytes": record.get("memory_limit_bytes"),
            "cf_rating": record.get("cf_rating"),
        },
        solutions=tuple(solutions[1:]),
        incorrect_solutions=tuple(_python_solutions(record, "incorrect_solutions")),
    )


def load_codecontests(
    *,
    split: str | None = None,
    path: str | Path | None = None,
    test_sets: Sequence[str] = ("public_tests", "private_tests"),
) -> list[Problem]:
    """Load CodeContests from a local file (``path``) or the hub (``split``: train, valid, test)."""
    unknown = [t for t in test_sets if t not in TEST_SETS]
    if unknown or not test_sets:
        raise DatasetError(DATASET, f"unknown test sets {unknown}; choose from {list(TEST_SETS)}")
    if path is not None:
        source = Path(path)
        if not source.is_file():
            raise DatasetError(DATASET, f"file not found; fix: {FIX}", path=source)
        records = list(read_records(DATASET, source))
    else:
        records = read_hub(DATASET, HUB_ID, split=split or "test", fix=FIX)
    return [record_to_problem(record, where, test_sets) for record, where in records]
