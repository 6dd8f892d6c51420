"""The sandbox: runs untrusted programs against test cases in a warm, isolated fork server and judges the results.

One :class:`Sandbox` owns one fork server (the ``forkserver`` package), started with an empty environment so that no
secret of the caller reaches it. Every run of untrusted code is a fresh child of that server (see
``forkserver/isolation.py`` for the isolation layers); this class decides the verdicts from what the child reported
(see ``checks.py``), resumes after a test that crashed or hung so that every test is judged on its own, and restarts
the server if it ever dies.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import shutil
import struct
import subprocess
import time
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from btp_ray.data.types import TestCase
from btp_ray.execution.checks import TestPlan, TestSpecError, compile_tests
from btp_ray.execution.config import SandboxConfig
from btp_ray.execution.jobs import JobRun
from btp_ray.execution.jobs import ServerDied as _ServerDied
from btp_ray.execution.results import ExecutionJob, ExecutionResult, ExecutionStatus

logger = logging.getLogger(__name__)

SERVER_SCRIPT = Path(__file__).with_name("forkserver") / "__main__.py"
# Only thread-count settings: the server environment carries nothing of the caller's.
SERVER_ENVIRONMENT = {
    "LANG": "C.UTF-8",
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
}
_REPLY_GRACE_S = 30.0
_PLAN_CACHE_SIZE = 512


class SandboxUnavailableError(RuntimeError):
    """The fork server could not start, or the host cannot provide the isolation the config demands."""


class SandboxClosedError(RuntimeError):
    """The sandbox was used after :meth:`Sandbox.close`."""


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
        self._plans: dict[tuple[Any, ...], TestPlan] = {}
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
        if (self.config.memory_limit_mb << 20) < hello["server_vm_bytes"] + (256 << 20):
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
        """Run ``program`` against ``tests``; ``timeout_s`` limits each test (default: the config's; see
        :mod:`btp_ray.execution.jobs` for the job's time budget)."""
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
            plan = self._plan(job)
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
                return JobRun(self.request, self.config, job, plan, started).execute()
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

    def _plan(self, job: ExecutionJob) -> TestPlan:
        """The job's compiled tests, cached: a batch usually holds many programs for the same problem."""
        key = (
            job.test_setup,
            *((t.kind, t.code, t.setup, t.stdin, t.fn_name, repr((t.args, t.expected_output))) for t in job.tests),
        )
        plan = self._plans.get(key)
        if plan is None:
            plan = compile_tests(job.tests, job.test_setup)
            if len(self._plans) >= _PLAN_CACHE_SIZE:
                self._plans.pop(next(iter(self._plans)))
            self._plans[key] = plan
        return plan

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
    def request(
        self, control: dict[str, Any], child_body: bytes, judge_body: bytes, timeout_s: float
    ) -> dict[str, Any]:
        """One raw run in the server: the control message, the program child's request and the judge's (empty for
        none) in; the raw capture out. Trusted data only: the verdict is made from it by :class:`JobRun`."""
        self._send(control, child_body, judge_body)
        return self._recv(timeout_s + _REPLY_GRACE_S)

    def _send(self, message: dict[str, Any], *bodies: bytes) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise _ServerDied("no server")
        frames = [json.dumps(message).encode(), *bodies]
        try:
            proc.stdin.write(b"".join(struct.pack(">I", len(body)) + body for body in frames))
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
