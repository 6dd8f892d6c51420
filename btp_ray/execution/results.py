"""Typed jobs and results of the sandbox: what to run, and what happened."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from btp_ray.data.types import TestCase


class ExecutionStatus(str, enum.Enum):
    """Outcome of a job; for a failed job, the reason of its first failing test (or of the program itself)."""

    PASSED = "passed"  # every test passed
    FAILED = "failed"  # a test's assertion failed, raised, or its output/value was wrong
    ERROR = "error"  # the program did not load (syntax error, exception, exit) or the input was invalid
    TIMEOUT = "timeout"  # a test (or loading) ran past its wall-clock limit
    MEMORY_LIMIT = "memory_limit"  # MemoryError under the address-space limit
    OUTPUT_LIMIT = "output_limit"  # stdout/stderr or reported values exceeded the cap
    CRASHED = "crashed"  # the process died (signal, os._exit) in the middle of a test
    SANDBOX_ERROR = "sandbox_error"  # the sandbox itself failed; not the program's fault
    NOT_RUN = "not_run"  # per test only: not reached within the job's time budget (the job's status is TIMEOUT)


@dataclass(frozen=True)
class ExecutionJob:
    """One program and its tests. ``test_setup`` runs once after the program, before the tests."""

    program: str
    tests: Sequence[TestCase]
    test_setup: str = ""
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "tests", tuple(self.tests))
        if not isinstance(self.program, str):
            raise ValueError(f"ExecutionJob.program must be a str, got {type(self.program).__name__}")
        if not isinstance(self.test_setup, str):
            raise ValueError(f"ExecutionJob.test_setup must be a str, got {type(self.test_setup).__name__}")
        if not all(isinstance(t, TestCase) for t in self.tests):
            raise ValueError("ExecutionJob.tests must be TestCase objects (see btp_ray.data.types)")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ValueError(f"ExecutionJob.timeout_s must be > 0 or None, got {self.timeout_s!r}")


@dataclass(frozen=True)
class ExecutionResult:
    """Verdict of one job. ``per_test[i]`` is whether test i passed; ``error`` is a one-line reason."""

    status: ExecutionStatus
    per_test: tuple[bool, ...] = ()
    per_test_status: tuple[ExecutionStatus, ...] = ()
    stdout: str = ""
    stderr: str = ""
    wall_s: float = 0.0
    error: str = ""
    details: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def passed(self) -> int:
        return sum(self.per_test)

    @property
    def total(self) -> int:
        return len(self.per_test)

    @property
    def pass_rate(self) -> float:
        return self.passed / self.total if self.per_test else 0.0

    @property
    def all_passed(self) -> bool:
        return self.status is ExecutionStatus.PASSED

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "passed": self.passed,
            "total": self.total,
            "pass_rate": self.pass_rate,
            "per_test": list(self.per_test),
            "per_test_status": [s.value for s in self.per_test_status],
            "stdout": self.stdout,
            "stderr": self.stderr,
            "wall_s": self.wall_s,
            "error": self.error,
        }
