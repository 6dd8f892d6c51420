"""One job's runs in the fork server and the verdict built from them (the trusted side of :class:`Sandbox`).

Time semantics. ``timeout_s`` bounds the loading of the program and each test, measured from outside the sandbox;
a test that crashes or runs past it fails with its own status and the tests after it are resumed in a fresh child,
so each test is judged on its own. The job as a whole has a **time budget**: once a test has run past ``timeout_s``,
the rest of the job gets at most ``(job_budget_timeouts - 1) * timeout_s`` more (0.5 × ``timeout_s`` by default),
and every job ends within ``max_job_s``. A program that never returns therefore costs about 1.5 × ``timeout_s``
whatever its number of tests, while one that hangs on one input still gets its other tests judged. Tests not
reached within the budget fail with status ``NOT_RUN`` ("not run: the job's time budget ran out"); they are never
dropped. A correct program that is slow but within ``timeout_s`` per test is not affected (up to ``max_job_s``).
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from typing import Any

from btp_ray.execution.checks import TestPlan, UnreportableValue, decode_value, judge_value, stdio_equal
from btp_ray.execution.config import SandboxConfig
from btp_ray.execution.results import ExecutionJob, ExecutionResult, ExecutionStatus

Outcome = tuple[bool, ExecutionStatus, str]
RequestFn = Callable[[dict[str, Any], bytes, bytes, float], dict[str, Any]]
MAX_RESULT_BYTES = 16 << 20
NOT_RUN_REASON = "not run: the job's time budget ran out"


class ServerDied(Exception):
    """The fork server died, or answered something that is not a reply (the sandbox restarts it)."""


class JobRun:
    """The runs of one job in the server and the verdict built from them."""

    def __init__(
        self, request: RequestFn, config: SandboxConfig, job: ExecutionJob, plan: TestPlan, started: float
    ) -> None:
        self.request = request
        self.config = config
        self.job = job
        self.plan = plan
        self.started = started
        self.deadline = started + config.max_job_s
        self.timeout_s = job.timeout_s or config.timeout_s
        self.outcomes: list[Outcome | None] = [None] * len(job.tests)
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.load_failure: Outcome | None = None
        self.runs = 0

    def execute(self) -> ExecutionResult:
        if self.plan.mode == "stdio":
            self._run_stdio()
        else:
            self._run_asserts()
        return self._result()

    def _timed_out(self) -> None:
        """A test ran past ``timeout_s``: the rest of the job shares what is left of its budget."""
        grace = self.timeout_s * (self.config.job_budget_timeouts - 1.0)
        self.deadline = min(self.deadline, time.monotonic() + grace)

    def _raw_run(self, start: int, stdin: str | None) -> dict[str, Any] | None:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0.001:
            return None
        keep = self.config.max_output_bytes if stdin is not None else self.config.keep_output_bytes
        limits = {
            "address_space_bytes": self.config.memory_limit_mb << 20,
            "cpu_seconds": int(remaining) + 2,
            "file_size_bytes": self.config.max_file_mb << 20,
            "open_files": self.config.max_open_files,
            "processes": self.config.max_processes,
            "keep_output_bytes": keep,
            "max_output_bytes": self.config.max_output_bytes,
            "max_result_bytes": MAX_RESULT_BYTES,
        }
        control = {
            "op": "run",
            "load_timeout_s": min(self.timeout_s, remaining),
            "test_timeout_s": self.timeout_s,
            "deadline_s": remaining,
            "limits": limits,
        }
        head = json.dumps(
            {
                "mode": self.plan.mode,
                "program": self.job.program,
                "test_setup": self.job.test_setup,
                "start": start,
                "stdin": stdin,
                "limits": limits,
            }
        )
        child_body = (head[:-1] + ', "tests": ' + (self.plan.program_tests_json or "[]") + "}").encode()
        judged = [t for t in self.plan.judge_tests if t["k"] >= start]
        judge_body = json.dumps({"test_setup": self.job.test_setup, "tests": judged}).encode() if judged else b""
        self.runs += 1
        raw = self.request(control, child_body, judge_body, remaining)
        if "sandbox_error" in raw:
            raise ServerDied(raw["sandbox_error"])
        self.stdout.append(raw["stdout"])
        self.stderr.append(raw["stderr"])
        if raw["timed_out"]:
            self._timed_out()
        return raw

    def _run_asserts(self) -> None:
        start, total, checks = 0, len(self.plan.checks), self.plan.checks
        while start < total:
            raw = self._raw_run(start, None)
            if raw is None:
                break
            events = raw["events"]
            failure = _program_failure(events, raw, self.timeout_s)
            if failure is not None:
                self.load_failure = failure
                return
            # A direct call is judged on what the program child reported, any other test on the judge's verdict.
            sources = ((events, ("value", "fail"), False), (raw["judge_events"], ("verdict",), True))
            for source, kinds, by_judge in sources:
                for event in source:
                    k = event.get("k")
                    if type(k) is not int or not start <= k < total or self.outcomes[k] is not None:
                        continue
                    if (checks[k].mode == "judge") is by_judge and event.get("e") in kinds:
                        self.outcomes[k] = _verdict(event) if by_judge else self._judge(k, event)
            pending = next((k for k in range(start, total) if self.outcomes[k] is None), None)
            if pending is None:
                return
            if checks[pending].mode == "judge" and any(e.get("e") == "done" for e in events):
                # The program child served every test and finished: the missing verdict is the judge's failure.
                self.outcomes[pending] = (False, ExecutionStatus.FAILED, "the test ended without a verdict")
            else:
                self.outcomes[pending] = _termination_outcome(raw, self.timeout_s, "the test")
            start = pending + 1

    def _judge(self, k: int, event: dict[str, Any]) -> Outcome:
        if event.get("e") == "fail":
            status = ExecutionStatus.MEMORY_LIMIT if event.get("mem") is True else ExecutionStatus.FAILED
            return False, status, str(event.get("err", "failed"))[:2000]
        try:
            value = decode_value(event.get("v"))
        except UnreportableValue as exc:
            return False, ExecutionStatus.FAILED, str(exc)
        ok, reason = judge_value(self.plan.checks[k], value)
        return ok, ExecutionStatus.PASSED if ok else ExecutionStatus.FAILED, reason

    def _run_stdio(self) -> None:
        for k, test in enumerate(self.job.tests):
            raw = self._raw_run(0, test.stdin)
            if raw is None:
                return
            events = raw["events"]
            compile_error = next((e for e in events if e.get("e") == "compile_error"), None)
            if compile_error is not None:
                self.load_failure = (False, ExecutionStatus.ERROR, str(compile_error.get("err"))[:2000])
                return
            runtime_error = next((e for e in events if e.get("e") == "load_error"), None)
            finished = raw["exit_code"] == 0 or any(e.get("e") == "done" for e in events)
            clean_exit = finished and not raw["timed_out"] and not raw["output_limit"]
            if runtime_error is not None:
                status = ExecutionStatus.MEMORY_LIMIT if runtime_error.get("mem") is True else ExecutionStatus.FAILED
                self.outcomes[k] = (False, status, str(runtime_error.get("err"))[:2000])
            elif not clean_exit:
                self.outcomes[k] = _termination_outcome(raw, self.timeout_s, "the program")
            elif stdio_equal(raw["stdout"], self.plan.checks[k].expected):
                self.outcomes[k] = (True, ExecutionStatus.PASSED, "")
            else:
                self.outcomes[k] = (False, ExecutionStatus.FAILED, "wrong output")

    def _result(self) -> ExecutionResult:
        total = len(self.plan.checks)
        if self.load_failure is not None:
            outcomes: list[Outcome] = [self.load_failure] * total
            status, error = self.load_failure[1], self.load_failure[2]
        else:
            outcomes = [o if o is not None else (False, ExecutionStatus.NOT_RUN, NOT_RUN_REASON) for o in self.outcomes]
            first_failure = next(((k, o) for k, o in enumerate(outcomes) if not o[0]), None)
            if first_failure is None:
                status, error = ExecutionStatus.PASSED, ""
            else:
                k, (_, status, reason) = first_failure
                if status is ExecutionStatus.NOT_RUN:  # the job as a whole ran out of time
                    status = ExecutionStatus.TIMEOUT
                error = f"test {k}: {reason}"
        keep = self.config.keep_output_bytes
        return ExecutionResult(
            status=status,
            per_test=tuple(o[0] for o in outcomes),
            per_test_status=tuple(o[1] for o in outcomes),
            stdout=_cap("".join(self.stdout), keep),
            stderr=_cap("".join(self.stderr), keep),
            wall_s=time.monotonic() - self.started,
            error=error,
            details={"runs": self.runs, "judged_in_judge": len(self.plan.judge_tests)},
        )


def _verdict(event: dict[str, Any]) -> Outcome:
    if event.get("ok") is True:
        return True, ExecutionStatus.PASSED, ""
    status = ExecutionStatus.MEMORY_LIMIT if event.get("mem") is True else ExecutionStatus.FAILED
    return False, status, str(event.get("err", "failed"))[:2000]


def _program_failure(events: list[dict[str, Any]], raw: dict[str, Any], timeout_s: float) -> Outcome | None:
    """Why the program did not load, or None if it did."""
    for event in events:
        kind = event.get("e")
        if kind == "loaded":
            return None
        if kind == "compile_error":
            return False, ExecutionStatus.ERROR, str(event.get("err"))[:2000]
        if kind == "load_error":
            status = ExecutionStatus.MEMORY_LIMIT if event.get("mem") is True else ExecutionStatus.ERROR
            return False, status, str(event.get("err"))[:2000]
    outcome = _termination_outcome(raw, timeout_s, "the program")
    if outcome[1] is ExecutionStatus.CRASHED and raw["signal"] is None:
        return False, ExecutionStatus.ERROR, f"the program exited with code {raw['exit_code']} while loading"
    return outcome


def _termination_outcome(raw: dict[str, Any], timeout_s: float, what: str) -> Outcome:
    if raw["timed_out"]:
        return False, ExecutionStatus.TIMEOUT, f"{what} ran past the {timeout_s:g} s time limit"
    if raw["output_limit"]:
        return False, ExecutionStatus.OUTPUT_LIMIT, f"{what} exceeded the output limit"
    sig = raw["signal"]
    if sig is not None:
        if sig == signal.SIGXCPU:
            return False, ExecutionStatus.TIMEOUT, f"{what} ran past its CPU time limit"
        return False, ExecutionStatus.CRASHED, f"{what} was killed by signal {sig}"
    return False, ExecutionStatus.CRASHED, f"{what} exited with code {raw['exit_code']} before reporting a result"


def _cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"\n... [{len(text) - limit} more characters cut]"
