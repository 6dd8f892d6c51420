"""APPS (Hendrycks et al. 2021) in its public formats: the Hugging Face JSON Lines rows (``codeparrot/apps``) or the
original directory layout (``<split>/<id>/question.txt``, ``input_output.json``, ``solutions.json``,
``metadata.json``, ``starter_code.py``).

``input_output`` holds ``inputs`` and ``outputs`` and, for call-based problems, ``fn_name``: those become
:attr:`TestKind.CALL` cases (expected values kept exactly as APPS stores them; APPS also accepts a match of the first
element of a list-wrapped output, and so does the sandbox), the others stdin/stdout cases.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from btp_ray.data.errors import DatasetError
from btp_ray.data.records import Where, read_hub, read_records, require
from btp_ray.data.types import Problem, TestCase

DATASET = "apps"
HUB_ID = "codeparrot/apps"
FIX = "pass --data-path <an APPS .jsonl, .json or .parquet file, or its original folder of problems>"


def _as_text(value: Any) -> str:
    if isinstance(value, list):
        return "\n".join(str(v) for v in value)
    return str(value)


def _json_field(record: dict[str, Any], where: Where, key: str, default: Any) -> Any:
    raw = record.get(key)
    if raw in (None, ""):
        return default
    if not isinstance(raw, str):
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DatasetError(DATASET, f"invalid JSON inside the field: {exc.msg}", field=key, **where) from exc


def build_prompt(question: str, starter_code: str, call_based: bool) -> str:
    """The APPS paper's prompt: question, starter code, and which answer format is expected."""
    parts = ["QUESTION:\n", question.strip(), "\n"]
    if starter_code.strip():
        parts += [starter_code.rstrip(), "\n"]
    parts.append("Use Call-Based format\n" if call_based else "Use Standard Input format\n")
    parts.append("ANSWER:\n")
    return "".join(parts)


def record_to_problem(record: dict[str, Any], where: Where) -> Problem:
    """One APPS record (HF row shape) → Problem."""
    problem_id = require(DATASET, record, where, "problem_id", (int, str))
    question = require(DATASET, record, where, "question", str)
    io = _json_field(record, where, "input_output", {})
    if not isinstance(io, dict):
        raise DatasetError(DATASET, "expected an object with 'inputs' and 'outputs'", field="input_output", **where)
    inputs, outputs = io.get("inputs", []), io.get("outputs", [])
    if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs):
        raise DatasetError(
            DATASET, "'inputs' and 'outputs' must be lists of equal length", field="input_output", **where
        )
    fn_name = io.get("fn_name")
    if fn_name:
        tests = [
            TestCase.call(fn_name, args if isinstance(args, list) else [args], expected)
            for args, expected in zip(inputs, outputs, strict=True)
        ]
    else:
        tests = [TestCase.stdio(_as_text(i), _as_text(o)) for i, o in zip(inputs, outputs, strict=True)]
    solutions = _json_field(record, where, "solutions", [])
    starter_code = record.get("starter_code") or ""
    return Problem(
        task_id=f"APPS/{problem_id}",
        prompt=build_prompt(question, starter_code, bool(fn_name)),
        tests=tuple(tests),
        entry_point=fn_name or None,
        canonical_solution=solutions[0] if solutions else None,
        source=DATASET,
        difficulty=record.get("difficulty"),
        metadata={"url": record.get("url"), "starter_code": starter_code, "num_solutions": len(solutions)},
        solutions=tuple(str(s) for s in solutions[1:]),
    )


def _read_directory(root: Path) -> list[tuple[dict[str, Any], Where]]:
    """The original release: one folder per problem (optionally under train/ and test/)."""
    folders = sorted(p for p in root.rglob("question.txt"))
    records = []
    for question_file in folders:
        folder = question_file.parent
        where: Where = {"path": folder}
        record: dict[str, Any] = {"problem_id": folder.name, "question": question_file.read_text(encoding="utf-8")}
        for key, filename in (("input_output", "input_output.json"), ("solutions", "solutions.json")):
            file = folder / filename
            record[key] = file.read_text(encoding="utf-8") if file.is_file() else ""
        metadata = folder / "metadata.json"
        if metadata.is_file():
            try:
                record.update(json.loads(metadata.read_text(encoding="utf-8")))
            except json.JSONDecodeError as exc:
                raise DatasetError(DATASET, f"invalid JSON: {exc.msg}", path=metadata) from exc
        starter = folder / "starter_code.py"
        record["starter_code"] = starter.read_text(encoding="utf-8") if starter.is_file() else ""
        records.append((record, where))
    if not records:
        raise DatasetError(DATASET, "directory holds no problem folders (no question.txt found)", path=root)
    return records


def load_apps(
    *, split: str | None = None, path: str | Path | None = None, difficulty: str | None = None
) -> list[Problem]:
    """Load APPS from a local file/directory (``path``) or the hub; filter by ``difficulty`` if given."""
    if path is not None:
        source = Path(path)
        if source.is_dir():
            sub = source / split if split and (source / split).is_dir() else source
            records = _read_directory(sub)
        elif source.is_file():
            records = list(read_records(DATASET, source))
        else:
            raise DatasetError(DATASET, f"file or directory not found; fix: {FIX}", path=source)
    else:
        records = read_hub(DATASET, HUB_ID, split=split or "test", fix=FIX)
    problems = [record_to_problem(record, where) for record, where in records]
    if difficulty is not None:
        problems = [p for p in problems if p.difficulty == difficulty]
    return problems
