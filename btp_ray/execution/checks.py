"""Trusted-side test semantics: turn test cases into what the sandbox's children run, and judge what they report.

No object of the program takes part in a verdict. Each test is one of two kinds:

- a **direct call**, ``assert F(<literals>) <op> <literal>`` (``==``, ``!=``, ``<``, ``<=``, ``>``, ``>=``, ``is
  None/True/False``), ``assert F(<literals>)`` or ``assert not F(<literals>)``, where ``F`` is a name the program
  defines (through ``candidate = F`` aliases in the test's setup): the program child only calls ``F`` and reports the
  value in a strict typed encoding; the literal never enters the sandbox and the comparison is made here, on rebuilt
  builtin values. APPS call-based tests are direct calls compared as APPS does.
- any other test (loops, helper calls, computed expected values, ``abs(x - y) < 1e-6``) runs in the sandbox's
  **judge child**, a process that never executes the program's code: it runs the test's code with its own builtins,
  its own stdlib modules and the test's own helpers (the job's ``test_setup``), and calls the program's functions over
  a channel that carries typed builtin values only (see ``forkserver/harness.py``). Its verdict is the test's.

So an always-equal object, a patched builtin or stdlib module, a redefined helper, an ``exit(0)`` before the asserts,
forged result lines or a replaced ``exec`` cannot produce a pass. stdin/stdout tests are compared here token-wise.
Boundary: a function a test calls by a name that only the program binds is the program's, run in the program child
(that is how the function under test is reached); a test that means by such a name a function the program imported
(``from math import isclose`` in the program, ``isclose(...)`` in the test) trusts the program's answer for it. A
module the program imported and the test uses (``math.isclose``) is the judge's own.
"""

from __future__ import annotations

import ast
import builtins
import json
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from btp_ray.data.types import TestCase, TestKind


class TestSpecError(ValueError):
    """A test case cannot be compiled (it does not parse, or its data is not JSON)."""

    __test__ = False


class UnreportableValue(ValueError):
    """The child reported a value that is not a plain builtin value (a user object, or malformed data)."""


_COMPARE_OPS: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
_MIRRORED = {ast.Eq: ast.Eq, ast.NotEq: ast.NotEq, ast.Lt: ast.Gt, ast.LtE: ast.GtE, ast.Gt: ast.Lt, ast.GtE: ast.LtE}
_SYMBOLS = {"Eq": "==", "NotEq": "!=", "Lt": "<", "LtE": "<=", "Gt": ">", "GtE": ">="}
_NO_VALUE = object()


@dataclass(frozen=True)
class Check:
    """How the trusted side judges one test: ``mode`` is compare, truthy, falsy, identity, call, stdio or judge (the
    judge child's verdict)."""

    mode: str
    op: str = ""
    expected: Any = None


@dataclass(frozen=True)
class TestPlan:
    """A job's tests compiled for the sandbox: what the program child runs per test (a direct call, or serving the
    judge), what the judge child runs (only the tests that are not direct calls, with the names it needs from the
    program) and how each test is judged here."""

    __test__ = False

    mode: str
    program_tests: list[dict[str, Any]]
    judge_tests: list[dict[str, Any]]
    checks: list[Check]
    program_tests_json: str = field(default="", compare=False)


_BUILTIN_NAMES = frozenset(dir(builtins))


def _literal(node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _NO_VALUE


def _parse(code: str, what: str, index: int) -> ast.Module:
    try:
        return ast.parse(code)
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        raise TestSpecError(f"{what} {index} does not parse: {exc}") from exc


def _aliases(setup: ast.Module) -> dict[str, str] | None:
    """``{alias: name}`` when the setup only binds names to names (``candidate = f``) and imports; else None."""
    aliases: dict[str, str] = {}
    for stmt in setup.body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            continue
        if (
            isinstance(stmt, ast.Assign)
            and len(stmt.targets) == 1
            and isinstance(stmt.targets[0], ast.Name)
            and isinstance(stmt.value, ast.Name)
        ):
            aliases[stmt.targets[0].id] = aliases.get(stmt.value.id, stmt.value.id)
            continue
        return None
    return aliases


def bound_names(*trees: ast.AST) -> set[str]:
    """Every name the code binds anywhere (assignments, definitions, imports, parameters, handlers)."""
    bound: set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
                bound.add(node.id)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                bound.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                bound.update((a.asname or a.name).split(".")[0] for a in node.names)
            elif isinstance(node, ast.arg):
                bound.add(node.arg)
            elif isinstance(node, ast.ExceptHandler) and node.name:
                bound.add(node.name)
    return bound


def _loaded_names(*trees: ast.AST) -> set[str]:
    return {n.id for tree in trees for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _direct_call(expr: ast.expr, aliases: dict[str, str] | None, trusted: set[str]) -> dict[str, Any] | None:
    """The program-child instruction for ``expr`` if it is a call of a program function with literal arguments."""
    if aliases is None or not isinstance(expr, ast.Call) or not isinstance(expr.func, ast.Name):
        return None
    if any(isinstance(a, ast.Starred) for a in expr.args) or any(k.arg is None for k in expr.keywords):
        return None
    name = aliases.get(expr.func.id, expr.func.id)
    if name in trusted or expr.func.id in trusted:
        return None  # the test's own code defines it: the judge runs it
    args = [_literal(a) for a in expr.args]
    kwargs = {k.arg: _literal(k.value) for k in expr.keywords}
    if any(v is _NO_VALUE for v in (*args, *kwargs.values())):
        return None
    try:
        return {"kind": "call", "fn": name, "args": encode_literal(tuple(args)), "kwargs": encode_literal(kwargs)}
    except TypeError:
        return None


def compile_assert(code: str, setup: str, index: int, test_setup: str = "") -> tuple[dict[str, Any], Check]:
    """The child instruction and the trusted check for one ASSERT test case: a direct call, or a test for the judge
    (``{"kind": "judge", "setup", "code", "names"}``, ``names`` being what it needs from the program)."""
    tree = _parse(code, "test", index)
    setup_tree = _parse(setup, "test", index) if setup else ast.Module(body=[], type_ignores=[])
    setup_of_job = _parse(test_setup, "test setup of test", index) if test_setup else ast.Module([], [])
    aliases = _aliases(setup_tree)
    trusted = bound_names(setup_of_job) | (bound_names(setup_tree) - set(aliases or ()))
    if len(tree.body) == 1 and isinstance(tree.body[0], ast.Assert):
        test = tree.body[0].test
        direct: tuple[ast.expr, Check] | None = None
        if isinstance(test, ast.Compare) and len(test.ops) == 1:
            left, op, right = test.left, test.ops[0], test.comparators[0]
            if type(op) in _COMPARE_OPS:
                expected = _literal(right)
                if expected is not _NO_VALUE:
                    direct = left, Check("compare", type(op).__name__, expected)
                else:
                    expected = _literal(left)
                    if expected is not _NO_VALUE:
                        direct = right, Check("compare", _MIRRORED[type(op)].__name__, expected)
            singleton = isinstance(right, ast.Constant) and (right.value is None or isinstance(right.value, bool))
            if isinstance(op, (ast.Is, ast.IsNot)) and singleton:
                direct = left, Check("identity", type(op).__name__, right.value)
        elif isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
            direct = test.operand, Check("falsy")
        else:
            direct = test, Check("truthy")
        if direct is not None:
            instruction = _direct_call(direct[0], aliases, trusted)
            if instruction is not None:
                return instruction, direct[1]
    names = _loaded_names(tree, setup_tree, setup_of_job) - bound_names(tree, setup_tree, setup_of_job)
    names = {n for n in names if n not in _BUILTIN_NAMES} | (set((aliases or {}).values()) - trusted)
    return {"kind": "judge", "setup": setup, "code": code, "names": sorted(names)}, Check("judge")


def compile_tests(tests: Sequence[TestCase], test_setup: str = "") -> TestPlan:
    """The job's :class:`TestPlan`. Mixing stdin/stdout tests with other kinds is refused."""
    kinds = {t.kind for t in tests}
    if TestKind.STDIO in kinds and len(kinds) > 1:
        raise TestSpecError("a job cannot mix stdin/stdout tests with assert or call tests")
    if kinds == {TestKind.STDIO}:
        return TestPlan("stdio", [], [], [Check("stdio", expected=t.expected_output) for t in tests], "[]")
    if test_setup:
        _parse(test_setup, "test setup of test", 0)
    program_tests, judge_tests, checks = [], [], []
    for index, test in enumerate(tests):
        if test.kind is TestKind.ASSERT:
            instruction, check = compile_assert(test.code, test.setup, index, test_setup)
        else:
            try:
                json.dumps(test.expected_output)
                args = encode_literal(tuple(test.args))
            except (TypeError, ValueError) as exc:
                raise TestSpecError(f"test {index}: call arguments/expected output are not JSON: {exc}") from exc
            instruction = {"kind": "call", "fn": test.fn_name, "args": args}
            check = Check("call", expected=test.expected_output)
        if instruction["kind"] == "judge":
            judge_tests.append({"k": index, **{key: instruction[key] for key in ("setup", "code", "names")}})
            instruction = {"kind": "judge"}
        program_tests.append(instruction)
        checks.append(check)
    return TestPlan("assert", program_tests, judge_tests, checks, json.dumps(program_tests))


def encode_literal(value: Any) -> list[Any]:
    """The typed encoding of a builtin literal value (what ``ast.literal_eval`` returns), as the children decode it."""
    t = type(value)
    if value is None:
        return ["n"]
    if t is bool:
        return ["b", value]
    if t is int:
        return ["i", format(value, "x")]
    if t is float:
        return ["f", repr(value)]
    if t is str:
        return ["s", value]
    if t is bytes:
        return ["y", value.hex()]
    if t is complex:
        return ["c", repr(value.real), repr(value.imag)]
    if t in (list, tuple, set, frozenset):
        return [{list: "l", tuple: "t", set: "S", frozenset: "F"}[t], [encode_literal(v) for v in value]]
    if t is dict:
        return ["d", [[encode_literal(k), encode_literal(v)] for k, v in value.items()]]
    raise TypeError(f"a {t.__name__} is not a literal value")


# ----------------------------------------------------------------------------------------------------- decoding
_MAX_DECODE_NODES = 1_000_000
_NOT_VALUES = {"A": "a numpy array", "r": "a range", "I": "an iterator", "m": "a module", "k": "a function or class"}


def decode_value(encoded: Any) -> Any:
    """Rebuild a builtin value from the child's typed encoding; raises :class:`UnreportableValue` otherwise."""
    budget = [_MAX_DECODE_NODES]

    def dec(node: Any, depth: int) -> Any:
        budget[0] -= 1
        if budget[0] < 0 or depth > 120:
            raise UnreportableValue("reported value is too large")
        if type(node) is not list or not node or type(node[0]) is not str:
            raise UnreportableValue("malformed value report")
        tag, rest = node[0], node[1:]
        try:
            if tag == "n" and not rest:
                return None
            if tag == "b" and type(rest[0]) is bool:
                return rest[0]
            if tag == "i":
                return int(rest[0], 16)
            if tag == "f":
                return float(rest[0])
            if tag == "s" and type(rest[0]) is str:
                return rest[0]
            if tag == "y":
                return bytes.fromhex(rest[0])
            if tag == "c":
                return complex(float(rest[0]), float(rest[1]))
            if tag in ("l", "t", "S", "F") and type(rest[0]) is list:
                items = [dec(item, depth + 1) for item in rest[0]]
                return {"l": list, "t": tuple, "S": set, "F": frozenset}[tag](items)
            if tag == "d" and type(rest[0]) is list:
                return {dec(pair[0], depth + 1): dec(pair[1], depth + 1) for pair in rest[0]}
            if tag == "N":  # a numpy scalar: compared as the builtin value it holds
                return dec(rest[1], depth + 1)
            if tag in ("o", "h"):
                name = str(rest[0] if tag == "o" else rest[1])[:100]
                raise UnreportableValue(f"returned a {name} object, not a plain builtin value")
            if tag in _NOT_VALUES:
                raise UnreportableValue(f"returned {_NOT_VALUES[tag]}, not a plain builtin value")
        except (IndexError, TypeError, ValueError, OverflowError) as exc:
            if isinstance(exc, UnreportableValue):
                raise
            raise UnreportableValue("malformed value report") from exc
        raise UnreportableValue("malformed value report")

    return dec(encoded, 0)


# ------------------------------------------------------------------------------------------------------ judging
def judge_value(check: Check, value: Any) -> tuple[bool, str]:
    """(passed, reason) for a decoded value under ``check``."""
    try:
        if check.mode == "compare":
            ok = bool(_COMPARE_OPS[getattr(ast, check.op)](value, check.expected))
            return ok, "" if ok else f"got {_short(value)}, expected {_SYMBOLS[check.op]} {_short(check.expected)}"
        if check.mode == "identity":
            ok = (value is check.expected) == (check.op == "Is")
            return ok, "" if ok else f"got {_short(value)}"
        if check.mode == "truthy":
            ok = bool(value)
            return ok, "" if ok else f"AssertionError (value {_short(value)} is false)"
        if check.mode == "falsy":
            ok = not value
            return ok, "" if ok else f"AssertionError (value {_short(value)} is true)"
        if check.mode == "call":
            ok = apps_call_equal(value, check.expected)
            return ok, "" if ok else f"got {_short(value)}, expected {_short(check.expected)}"
    except (TypeError, ValueError, RecursionError, MemoryError) as exc:
        return False, f"{type(exc).__name__}: {exc}"[:300]
    raise AssertionError(f"judge_value called for check mode {check.mode!r}")


def apps_call_equal(output: Any, expected: Any) -> bool:
    """APPS call-based comparison: tuples as lists, and a one-element wrapping of the expected output accepted."""
    if isinstance(output, tuple):
        output = list(output)
    if output == expected:
        return True
    if isinstance(expected, list) and expected:
        if output == expected[0]:
            return True
        if isinstance(output, list) and output and isinstance(output[0], tuple):
            return [list(x) for x in output] == expected[0]
    return False


def stdio_equal(actual: str, expected: str, *, rel_tol: float = 1e-5, abs_tol: float = 1e-8) -> bool:
    """Token-wise comparison as APPS does: whitespace-insensitive, numbers equal within np.allclose's tolerance."""
    got, want = actual.split(), expected.split()
    if got == want:
        return True
    if len(got) != len(want):
        return False
    for a, b in zip(got, want, strict=False):
        if a == b:
            continue
        try:
            x, y = float(a), float(b)
        except ValueError:
            return False
        if not (math.isfinite(x) and math.isfinite(y)) or abs(x - y) > abs_tol + rel_tol * abs(y):
            return False
    return True


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
