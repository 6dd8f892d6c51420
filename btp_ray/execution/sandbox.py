"""The sandbox: runs untrusted programs against test cases in a warm, isolated fork server and judges the results.

One :class:`Sandbox` owns one fork server (``_server.py``), started with an empty environment so that no secret of
the caller reaches it. Every run of untrusted code is a fresh child of that server (see ``_server.py`` for the
isolation layers); this class decides the verdicts from what the child reported (see ``checks.py``), resumes after a
test that crashed or hung so that every test is judged on its own, and restarts the server if it ever dies.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import shutil
import signal
import struct
import subprocess
import time
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from btp_ray.data.types import TestCase
from btp_ray.execution.checks import (
    Check,
    TestSpecError,
    UnreportableValue,
    compile_tests,
    decode_value,
    judge_value,
    stdio_equal,
)
from btp_ray.execution.config import SandboxConfig
from btp_ray.execution.results import ExecutionJob, ExecutionResult, ExecutionStatus

logger = logging.getLogger(__name__)

SERVER_SCRIPT = Path(__file__).with_name("_server.py")
# Only thread-count settings: the server environment carries nothing of the caller's.
SERVER_ENVIRONMENT = {
    "LANG": "C.UTF-8",
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
}
_MAX_RESULT_BYTES = 16 << 20
_REPLY_GRACE_S = 30.0

Outcome = tuple[bool, ExecutionStatus, str]


class SandboxUnavailableError(RuntimeError):
    """The fork server could not start, or the host cannot provide the isolation the config demands."""


class SandboxClosedError(RuntimeError):
    """The sandbox was used after :meth:`Sandbox.close`."""


class _ServerDied(Exception):
    pass


class Sandbox:
    """Runs programs against tests in isolated children of a warm fork server. Use as a context manager."""

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize | None = None
        self._closed = False
        self.features: frozenset[str] = frozenset()
        self.missing: dict[str, str] = {}
        self.server_info: dict[str, Any] = {}
        self._start_server()

    # ------------------------------------------------------------------------------------------------ lifecycle
    def _start_server(self) -> None:
        proc = subprocess.Popen(
            [self.config.python_executable, "-I", str(SERVER_SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=dict(SERVER_ENVIRONMENT),
            cwd="/",
            close_fds=True,
        )
        self._proc = proc
        self._finalizer = weakref.finalize(self, _kill_process, proc)
        try:
            self._send(
                {
                    "owner_pid": os.getpid(),
                    "preload_modules": list(self.config.preload_modules),
                    "sandbox_uid": self.config.sandbox_uid,
                    "scratch_mb": self.config.scratch_mb,
                }
            )
            hello = self._recv(self.config.startup_timeout_s)
        except _ServerDied as exc:
            self._kill_server()
            raise SandboxUnavailableError(f"the sandbox server did not start: {exc}") from exc
        if not hello.get("ok"):
            self._kill_server()
            raise SandboxUnavailableError(f"the sandbox server failed to start: {hello.get('error')}")
        # The server removes its scratch root on a clean exit; the owner does it when the server was killed.
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _kill_process, proc, hello["scratch_root"])
        self.features = frozenset(hello["features"])
        self.missing = dict(hello["missing"])
        self.server_info = hello
        lacking = sorted(self.config.isolation.required_features - self.features)
        if lacking:
            self._kill_server()
            reasons = "; ".join(f"{name}: {self.missing.get(name, 'unavailable')}" for name in lacking)
            raise SandboxUnavailableError(
                f"isolation={self.config.isolation.value} needs {', '.join(lacking)}, which this host lacks ({reasons})"
            )
        if self.missing:
            logger.warning(
                "sandbox runs without: %s", "; ".join(f"{name} ({why})" for name, why in sorted(self.missing.items()))
            )
        if hello["preload_failed"]:
            logger.info("sandbox could not preload: %s", "; ".join(hello["preload_failed"]))
        if self._address_space_bytes() < hello["server_vm_bytes"] + (256 << 20):
            self._kill_server()
            raise SandboxUnavailableError(
                f"SandboxConfig.memory_limit_mb={self.config.memory_limit_mb} is below the fork server's own address "
                f"space ({hello['server_vm_bytes'] >> 20} MiB) + 256 MiB: raise it or preload fewer modules"
            )

    def _kill_server(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
        self._proc = None

    def close(self) -> None:
        """Stop the fork server; every child it ran is already gone, so nothing is left behind."""
        if self._closed:
            return
        self._closed = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                self._send({"op": "close"})
                proc.wait(timeout=5)
            except (_ServerDied, subprocess.TimeoutExpired):
                pass
        self._kill_server()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def server_pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def scratch_view(self) -> str | None:
        """Where this process sees the scratch tree: between jobs it holds one empty directory, the next job's. With
        ``scratch_tmpfs`` the tree lives in the server's mount namespace, seen from here through
        ``/proc/<server>/root``."""
        pid, root = self.server_pid, self.server_info.get("scratch_root")
        if pid is None or root is None:
            return None
        return f"/proc/{pid}/root{root}" if "scratch_tmpfs" in self.features else root

    # ------------------------------------------------------------------------------------------------ public runs
    def run(
        self, program: str, tests: Sequence[TestCase], *, test_setup: str = "", timeout_s: float | None = None
    ) -> ExecutionResult:
        """Run ``program`` against ``tests``; ``timeout_s`` limits each test (default: the config's)."""
        return self.run_job(ExecutionJob(program=program, tests=tests, test_setup=test_setup, timeout_s=timeout_s))

    def run_many(self, jobs: Iterable[ExecutionJob]) -> list[ExecutionResult]:
        """Run jobs one after another; results in input order."""
        return [self.run_job(job) for job in jobs]

    def run_job(self, job: ExecutionJob) -> ExecutionResult:
        if self._closed:
            raise SandboxClosedError("this Sandbox is closed")
        if not isinstance(job, ExecutionJob):
            raise ValueError(f"run_job expects an ExecutionJob, got {type(job).__name__}")
        started = time.monotonic()
        invalid = self._invalid_input(job)
        if invalid:
            return ExecutionResult(
                ExecutionStatus.ERROR,
                per_test=(False,) * len(job.tests),
                per_test_status=(ExecutionStatus.ERROR,) * len(job.tests),
                error=invalid,
                wall_s=time.monotonic() - started,
            )
        try:
            mode, instructions, checks = compile_tests(job.tests)
        except TestSpecError as exc:
            return ExecutionResult(
                ExecutionStatus.ERROR,
                per_test=(False,) * len(job.tests),
                per_test_status=(ExecutionStatus.ERROR,) * len(job.tests),
                error=str(exc),
                wall_s=time.monotonic() - started,
            )
        for attempt in range(2):
            try:
                return _JobRun(self, job, mode, instructions, checks, started).execute()
            except _ServerDied as exc:
                logger.error("sandbox server died (attempt %d): %s; restarting it", attempt + 1, exc)
                self._kill_server()
                self._start_server()
        return ExecutionResult(
            ExecutionStatus.SANDBOX_ERROR,
            per_test=(False,) * len(job.tests),
            per_test_status=(ExecutionStatus.SANDBOX_ERROR,) * len(job.tests),
            error="the sandbox server died twice while running this job",
            wall_s=time.monotonic() - started,
        )

    def _invalid_input(self, job: ExecutionJob) -> str:
        if not job.tests:
            return "the job has no tests"
        if not job.program.strip():
            return "the program is empty"
        try:
            size = len(job.program.encode("utf-8"))
            job.test_setup.encode("utf-8")
        except UnicodeEncodeError as exc:
            return f"the program is not valid UTF-8 text ({exc.reason} at position {exc.start})"
        if size > self.config.max_program_bytes:
            return f"the program has {size} bytes, more than max_program_bytes={self.config.max_program_bytes}"
        return ""

    # ------------------------------------------------------------------------------------------------ protocol
    def _address_space_bytes(self) -> int:
        return self.config.memory_limit_mb << 20

    def request(self, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """One raw run in the server (trusted data in, raw capture out)."""
        self._send(request)
        return self._recv(timeout_s + _REPLY_GRACE_S)

    def _send(self, message: dict[str, Any]) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise _ServerDied("no server")
        body = json.dumps(message).encode()
        try:
            proc.stdin.write(struct.pack(">I", len(body)) + body)
            proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise _ServerDied(f"cannot write to the server: {exc}") from exc

    def _recv(self, timeout_s: float) -> dict[str, Any]:
        proc = self._proc
        if proc is None or proc.stdout is None:
            raise _ServerDied("no server")
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        header = _read_exact(fd, 4, deadline)
        body = _read_exact(fd, struct.unpack(">I", header)[0], deadline)
        return json.loads(body)


def _read_exact(fd: int, size: int, deadline: float) -> bytes:
    chunks, remaining = [], size
    while remaining:
        wait = deadline - time.monotonic()
        if wait <= 0 or not select.select([fd], [], [], wait)[0]:
            raise _ServerDied("the server did not answer in time")
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            raise _ServerDied("the server exited")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _kill_process(proc: subprocess.Popen[bytes], scratch_root: str | None = None) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    if scratch_root:
        shutil.rmtree(scratch_root, ignore_errors=True)
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


class _JobRun:
    """The runs of one job in the server and the verdict built from them."""

    def __init__(
        self,
        sandbox: Sandbox,
        job: ExecutionJob,
        mode: str,
        instructions: list[dict[str, Any]],
        checks: list[Check],
        started: float,
    ) -> None:
        self.sandbox = sandbox
        self.config = sandbox.config
        self.job = job
        self.mode = mode
        self.instructions = instructions
        self.checks = checks
        self.started = started
        self.deadline = started + self.config.max_job_s
        self.timeout_s = job.timeout_s or self.config.timeout_s
        self.outcomes: list[Outcome | None] = [None] * len(job.tests)
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.load_failure: Outcome | None = None

    def execute(self) -> ExecutionResult:
        if self.mode == "stdio":
            self._run_stdio()
        else:
            self._run_asserts()
        return self._result()

    def _raw_run(self, start: int, stdin: str | None) -> dict[str, Any] | None:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            return None
        keep = self.config.max_output_bytes if stdin is not None else self.config.keep_output_bytes
        request = {
            "op": "run",
            "mode": self.mode,
            "program": self.job.program,
            "test_setup": self.job.test_setup,
            "tests": self.instructions,
            "start": start,
            "stdin": stdin,
            "load_timeout_s": self.timeout_s,
            "test_timeout_s": self.timeout_s,
            "deadline_s": remaining,
            "limits": {
                "address_space_bytes": self.sandbox._address_space_bytes(),
                "cpu_seconds": int(remaining) + 2,
                "file_size_bytes": self.config.max_file_mb << 20,
                "open_files": self.config.max_open_files,
                "processes": self.config.max_processes,
                "keep_output_bytes": keep,
                "max_output_bytes": self.config.max_output_bytes,
                "max_result_bytes": _MAX_RESULT_BYTES,
            },
        }
        raw = self.sandbox.request(request, remaining)
        if "sandbox_error" in raw:
            raise _ServerDied(raw["sandbox_error"])
        self.stdout.append(raw["stdout"])
        self.stderr.append(raw["stderr"])
        return raw

    def _run_asserts(self) -> None:
        start = 0
        total = len(self.checks)
        while start < total:
            raw = self._raw_run(start, None)
            if raw is None:
                break
            events = raw["events"]
            failure = _program_failure(events, raw, self.timeout_s)
            if failure is not None:
                self.load_failure = failure
                return
            last_begun = None
            for event in events:
                k = event.get("k")
                if type(k) is not int or not start <= k < total or self.outcomes[k] is not None:
                    continue
                kind = event.get("e")
                if kind == "begin":
                    last_begun = k
                elif kind in ("value", "ok", "fail"):
                    self.outcomes[k] = self._judge(k, event)
            pending = next((k for k in range(start, total) if self.outcomes[k] is None), None)
            if pending is None:
                return
            culprit = last_begun if last_begun is not None and self.outcomes[last_begun] is None else pending
            self.outcomes[culprit] = _termination_outcome(raw, self.timeout_s, "the test")
            start = culprit + 1

    def _judge(self, k: int, event: dict[str, Any]) -> Outcome:
        check = self.checks[k]
        kind = event.get("e")
        if kind == "fail":
            status = ExecutionStatus.MEMORY_LIMIT if event.get("mem") is True else ExecutionStatus.FAILED
            return False, status, str(event.get("err", "failed"))[:2000]
        if kind == "ok":
            if check.mode == "inprocess":
                return True, ExecutionStatus.PASSED, ""
            return False, ExecutionStatus.FAILED, "no value was reported for this test"
        if check.mode == "inprocess":
            return False, ExecutionStatus.FAILED, "a value was reported for a statement test"
        try:
            value = decode_value(event.get("v"))
        except UnreportableValue as exc:
            return False, ExecutionStatus.FAILED, str(exc)
        ok, reason = judge_value(check, value)
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
            clean_exit = raw["exit_code"] == 0 and not raw["timed_out"] and not raw["output_limit"]
            if runtime_error is not None:
                status = ExecutionStatus.MEMORY_LIMIT if runtime_error.get("mem") is True else ExecutionStatus.FAILED
                self.outcomes[k] = (False, status, str(runtime_error.get("err"))[:2000])
            elif not clean_exit:
                self.outcomes[k] = _termination_outcome(raw, self.timeout_s, "the program")
            elif stdio_equal(raw["stdout"], self.checks[k].expected):
                self.outcomes[k] = (True, ExecutionStatus.PASSED, "")
            else:
                self.outcomes[k] = (False, ExecutionStatus.FAILED, "wrong output")

    def _result(self) -> ExecutionResult:
        total = len(self.checks)
        if self.load_failure is not None:
            outcomes: list[Outcome] = [self.load_failure] * total
            status, error = self.load_failure[1], self.load_failure[2]
        else:
            outcomes = [
                o if o is not None else (False, ExecutionStatus.TIMEOUT, "not run: the job's time budget ran out")
                for o in self.outcomes
            ]
            first_failure = next(((k, o) for k, o in enumerate(outcomes) if not o[0]), None)
            if first_failure is None:
                status, error = ExecutionStatus.PASSED, ""
            else:
                k, (_, status, reason) = first_failure
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
        )


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
