"""Problem and test-case types shared by every role (datasets, sandbox, samplers, replay).

Frozen dataclasses with a lossless JSON round-trip (``to_dict``/``from_dict``), so problems can cross process and
actor boundaries and be written to results files.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any


class TestKind(str, enum.Enum):
    """How a test case is checked."""

    __test__ = False  # not a pytest class

    ASSERT = "assert"  # a Python assert statement (or block of statements) run after the program
    STDIO = "stdio"  # the program reads ``stdin``; its stdout is compared with ``expected_output``
    CALL = "call"  # APPS call-based: ``fn_name(*args)`` is compared with ``expected_output``


@dataclass(frozen=True)
class TestCase:
    """One test of a problem. Build with :meth:`assertion`, :meth:`stdio` or :meth:`call`.

    ``setup`` is code run (in the sandbox) before this case only, after the program and the problem's
    ``test_setup``; HumanEval keeps the statements that precede an assert in ``check`` here.
    """

    __test__ = False  # not a pytest class

    kind: TestKind
    code: str = ""  # ASSERT: the assert statement(s)
    setup: str = ""
    stdin: str = ""  # STDIO
    fn_name: str = ""  # CALL
    args: Any = None  # CALL: JSON-compatible list of positional arguments
    expected_output: Any = None  # STDIO: str; CALL: JSON-compatible value

    def __post_init__(self) -> None:
        kind = TestKind(self.kind)
        object.__setattr__(self, "kind", kind)
        if kind is TestKind.ASSERT and not self.code.strip():
            raise ValueError("TestCase(kind=assert) needs a non-empty 'code'")
        if kind is TestKind.STDIO and not isinstance(self.expected_output, str):
            raise ValueError("TestCase(kind=stdio) needs 'expected_output' as a string")
        if kind is TestKind.CALL:
            if not self.fn_name:
                raise ValueError("TestCase(kind=call) needs 'fn_name'")
            if not isinstance(self.args, (list, tuple)):
                raise ValueError("TestCase(kind=call) needs 'args' as a list")

    @classmethod
    def assertion(cls, code: str, setup: str = "") -> TestCase:
        return cls(kind=TestKind.ASSERT, code=code, setup=setup)

    @classmethod
    def stdio(cls, stdin: str, expected_output: str) -> TestCase:
        return cls(kind=TestKind.STDIO, stdin=stdin, expected_output=expected_output)

    @classmethod
    def call(cls, fn_name: str, args: list[Any], expected_output: Any) -> TestCase:
        return cls(kind=TestKind.CALL, fn_name=fn_name, args=list(args), expected_output=expected_output)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind.value}
        if self.kind is TestKind.ASSERT:
            out.update(code=self.code, setup=self.setup)
        elif self.kind is TestKind.STDIO:
            out.update(stdin=self.stdin, expected_output=self.expected_output)
        else:
            out.update(fn_name=self.fn_name, args=list(self.args), expected_output=self.expected_output)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TestCase:
        return cls(**data)


@dataclass(frozen=True)
class Problem:
    """A code-generation problem.

    ``prompt`` is what the model sees (for HumanEval the function signature and docstring, which the completion
    continues). ``test_setup`` runs once before the tests (MBPP ``test_setup_code``, HumanEval's module-level test
    code). ``entry_point`` is the function under test, or None for stdin/stdout problems.
    """

    task_id: str
    prompt: str
    tests: tuple[TestCase, ...]
    entry_point: str | None = None
    canonical_solution: str | None = None
    test_setup: str = ""
    source: str = ""
    difficulty: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    solutions: tuple[str, ...] = ()
    incorrect_solutions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.task_id:
            raise ValueError("Problem needs a non-empty 'task_id'")
        object.__setattr__(self, "tests", tuple(self.tests))
        object.__setattr__(self, "solutions", tuple(self.solutions))
        object.__setattr__(self, "incorrect_solutions", tuple(self.incorrect_solutions))

    def reference_program(self) -> str | None:
        """The complete reference program (prompt + body for completion-style prompts), or None."""
        if self.canonical_solution is None:
            return None
        if self.metadata.get("solution_is_completion"):
            return self.prompt + self.canonical_solution
        return self.canonical_solution

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "prompt": self.prompt,
            "tests": [t.to_dict() for t in self.tests],
            "entry_point": self.entry_point,
            "canonical_solution": self.canonical_solution,
            "test_setup": self.test_setup,
            "source": self.source,
            "difficulty": self.difficulty,
            "metadata": self.metadata,
            "solutions": list(self.solutions),
            "incorrect_solutions": list(self.incorrect_solutions),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Problem:
        data = dict(data)
        data["tests"] = tuple(TestCase.from_dict(t) for t in data.get("tests", ()))
        data["solutions"] = tuple(data.get("solutions", ()))
        data["incorrect_solutions"] = tuple(data.get("incorrect_solutions", ()))
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Problem:
        return cls.from_dict(json.loads(text))
