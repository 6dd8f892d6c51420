"""Trusted-side test semantics: turn test cases into what the sandboxed child runs, and judge what it reports.

The verdict is always decided here, outside the sandbox. For ``assert EXPR <op> LITERAL`` (``==``, ``!=``, ``<``,
``<=``, ``>``, ``>=``, ``is None/True/False``) the child only evaluates EXPR and reports a strictly typed encoding of
its value (exact builtin types; subclasses only when they keep their base's comparisons); the literal never enters the
sandbox and the comparison is made here on rebuilt builtin values. ``assert EXPR`` and ``assert not EXPR`` are judged
the same way on EXPR's truthiness. So an always-equal object, an ``exit(0)`` before the asserts, forged result lines or
a replaced ``exec`` cannot produce a pass without the true value.

Boundary: tests of any other shape (several statements, loops, ``assert`` inside helper functions) run in the child
and report only "completed without exception"; a hostile program could forge that report. APPS call-based tests
report the function's value and are compared here as APPS does; stdin/stdout tests are compared here token-wise.
"""

from __future__ import annotations

import ast
import json
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
    """How the trusted side judges one test: ``mode`` is compare, truthy, falsy, identity, inprocess, call or stdio."""

    mode: str
    op: str = ""
    expected: Any = None


def _literal(node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _NO_VALUE


def compile_assert(code: str, setup: str, index: int) -> tuple[dict[str, Any], Check]:
    """The child instruction and the trusted check for one ASSERT test case."""
    try:
        tree = ast.parse(code)
        if setup:
            ast.parse(setup)
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        raise TestSpecError(f"test {index} does not parse: {exc}") from exc
    if len(tree.body) == 1 and isinstance(tree.body[0], ast.Assert):
        test = tree.body[0].test
        if isinstance(test, ast.Compare) and len(test.ops) == 1:
            left, op, right = test.left, test.ops[0], test.comparators[0]
            if type(op) in _COMPARE_OPS:
                expected = _literal(right)
                if expected is not _NO_VALUE:
                    return _value(left, setup), Check("compare", type(op).__name__, expected)
                expected = _literal(left)
                if expected is not _NO_VALUE:
                    return _value(right, setup), Check("compare", _MIRRORED[type(op)].__name__, expected)
            singleton = isinstance(right, ast.Constant) and (right.value is None or isinstance(right.value, bool))
            if isinstance(op, (ast.Is, ast.IsNot)) and singleton:
                return _value(left, setup), Check("identity", type(op).__name__, right.value)
        if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
            return _value(test.operand, setup), Check("falsy")
        return _value(test, setup), Check("truthy")
    return {"kind": "exec", "code": code, "setup": setup}, Check("inprocess")


def _value(expr: ast.expr, setup: str) -> dict[str, Any]:
    return {"kind": "value", "expr": ast.unparse(expr), "setup": setup}


def compile_tests(tests: Sequence[TestCase]) -> tuple[str, list[dict[str, Any]], list[Check]]:
    """(mode, child instructions, trusted checks). Mixing stdin/stdout tests with other kinds is refused."""
    kinds = {t.kind for t in tests}
    if TestKind.STDIO in kinds and len(kinds) > 1:
        raise TestSpecError("a job cannot mix stdin/stdout tests with assert or call tests")
    if kinds == {TestKind.STDIO}:
        return "stdio", [], [Check("stdio", expected=t.expected_output) for t in tests]
    instructions, checks = [], []
    for index, test in enumerate(tests):
        if test.kind is TestKind.ASSERT:
            instruction, check = compile_assert(test.code, test.setup, index)
        else:
            try:
                args = json.dumps(list(test.args))
                json.dumps(test.expected_output)
            except (TypeError, ValueError) as exc:
                raise TestSpecError(f"test {index}: call arguments/expected output are not JSON: {exc}") from exc
            instruction = {"kind": "call", "fn": test.fn_name, "args": args, "setup": test.setup}
            check = Check("call", expected=test.expected_output)
        instructions.append(instruction)
        checks.append(check)
    return "assert", instructions, checks


# ----------------------------------------------------------------------------------------------------- decoding
_MAX_DECODE_NODES = 1_000_000


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
            if tag == "o":
                raise UnreportableValue(f"returned a {str(rest[0])[:100]} object, not a plain builtin value")
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
