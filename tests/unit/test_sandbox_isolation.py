"""The isolation mechanisms of the fork server, each checked for the specific outcome it must produce.

The seccomp filter is compiled once in the server and only installed in each child: these tests load that exported
program in a real child and check the errno of each kind of rule (plain deny, argument-filtered deny, ENOSYS for
clone3), both directly and from inside a sandboxed job.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
import textwrap
from pathlib import Path

import pytest

from btp_ray.data.types import TestCase
from btp_ray.execution import ExecutionStatus, IsolationLevel, Sandbox, SandboxConfig, _server

pyseccomp = pytest.importorskip("pyseccomp")

CLONE_NEWNET = 0x40000000
SYS_CLONE3 = 435


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(SandboxConfig(isolation=IsolationLevel.FULL, timeout_s=3.0, memory_limit_mb=1024)) as box:
        yield box


def _in_child(probe) -> tuple[int, ...]:
    """Run ``probe`` in a forked child and return the integers it reported (a failure to report is -999)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            values = probe()
            os.write(write_fd, struct.pack(f"={len(values)}q", *values))
        finally:
            os._exit(0)
    os.close(write_fd)
    data = b"".join(iter(lambda: os.read(read_fd, 4096), b""))
    os.close(read_fd)
    os.waitpid(pid, 0)
    return struct.unpack(f"={len(data) // 8}q", data) if data else (-999,)


def test_exported_seccomp_program_is_whole_bpf_instructions():
    program = _server._seccomp_bpf(pyseccomp)
    assert len(program) % 8 == 0
    assert 8 < len(program) // 8 < 4096  # BPF_MAXINSNS


def test_precompiled_seccomp_filter_denies_in_a_child_that_only_loads_it():
    loaded = _server._SeccompProgram(_server._seccomp_bpf(pyseccomp))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long

    def probe():
        before = libc.unshare(0)  # allowed before the filter: unshare with no flags is a no-op
        _server._prctl(_server.PR_SET_NO_NEW_PRIVS, 1)
        loaded.load()
        ctypes.set_errno(0)
        unshare = libc.unshare(CLONE_NEWNET)
        unshare_errno = ctypes.get_errno()
        ctypes.set_errno(0)
        clone3 = libc.syscall(SYS_CLONE3, None, 0)
        clone3_errno = ctypes.get_errno()
        try:
            socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
            inet_errno = 0
        except OSError as exc:
            inet_errno = exc.errno
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close()  # other families stay allowed
        status = Path("/proc/self/status").read_text().splitlines()
        mode = next(int(line.split()[1]) for line in status if line.startswith("Seccomp:"))
        return before, unshare, unshare_errno, clone3, clone3_errno, inet_errno, mode, os.getpid() > 0

    assert _in_child(probe) == (0, -1, errno.EPERM, -1, errno.ENOSYS, errno.EPERM, 2, 1)


def test_sandboxed_program_runs_under_the_filter_with_the_specific_errnos(sandbox):
    program = textwrap.dedent(
        """
        import ctypes, errno, socket, subprocess
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long

        def call(function, *args):
            ctypes.set_errno(0)
            return function(*args), ctypes.get_errno()

        def status(field):
            return next(line.split()[1] for line in open("/proc/self/status") if line.startswith(field + ":"))

        def inet():
            try:
                socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            except OSError as exc:
                return exc.errno

        def spawn():
            return subprocess.run(["true"]).returncode  # clone3 -> ENOSYS -> libc falls back to plain clone
        """
    )
    tests = [
        TestCase.assertion("assert call(libc.unshare, 0x40000000) == (-1, errno.EPERM)"),  # CLONE_NEWNET
        TestCase.assertion("assert call(libc.ptrace, 0, 0, 0, 0) == (-1, errno.EPERM)"),
        TestCase.assertion("assert call(libc.syscall, 435, 0, 0) == (-1, errno.ENOSYS)"),  # clone3
        TestCase.assertion("assert inet() == errno.EPERM"),
        TestCase.assertion("assert status('Seccomp') == '2' and status('NoNewPrivs') == '1'"),
        TestCase.assertion("assert spawn() == 0"),
    ]
    result = sandbox.run(program, tests)
    assert result.per_test == (True,) * len(tests), result.error
    assert result.status is ExecutionStatus.PASSED
