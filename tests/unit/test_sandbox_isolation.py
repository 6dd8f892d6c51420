"""The isolation mechanisms of the fork server, each checked for the specific outcome it must produce.

The seccomp filter is compiled once in the server and only installed in each child: these tests load that exported
program in a real child and check the errno of each kind of rule (plain deny, argument-filtered deny, ENOSYS for
clone3), both directly and from inside a sandboxed job. Each job's child is forked and confined (rlimits, Landlock,
seccomp) before its request arrives: the other tests check that such a child still gives each job a fresh process
with scratch-only write access, the limits that job asked for, a fresh scratch directory whatever the last job left,
that it is replaced when it dies before its job, that it is gone with the sandbox, and that a job dies with the
server.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import socket
import struct
import textwrap
import threading
import time
from pathlib import Path

import pytest

from btp_ray.data.types import TestCase
from btp_ray.execution import ExecutionStatus, IsolationLevel, Sandbox, SandboxConfig
from btp_ray.execution.forkserver import linux, seccomp
from tests.sandbox_helpers import settled

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
    program = seccomp.seccomp_bpf(pyseccomp)
    assert len(program) % 8 == 0
    assert 8 < len(program) // 8 < 4096  # BPF_MAXINSNS


def test_precompiled_seccomp_filter_denies_in_a_child_that_only_loads_it():
    loaded = seccomp.SeccompProgram(seccomp.seccomp_bpf(pyseccomp))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long

    def probe():
        before = libc.unshare(0)  # allowed before the filter: unshare with no flags is a no-op
        linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
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


def test_the_server_compiles_the_filter_without_importing_the_bindings(sandbox):
    # A job starts from a copy of the server: the bindings' imports (threading, through ctypes.util) are not there.
    program = "import sys\nloaded = {'threading', 'pyseccomp', 'seccomp', 'ctypes.util'} & set(sys.modules)\n"
    result = sandbox.run(program, [TestCase.assertion("assert loaded == set()")])
    assert result.status is ExecutionStatus.PASSED, result.error
    assert "seccomp" in sandbox.features


# ------------------------------------------------------------------------------------------------ prepared children
def _children(pid: int) -> list[tuple[int, int]]:
    """(pid, uid) of each child of ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = dict(line.split(":", 1) for line in (entry / "status").read_text().splitlines() if ":" in line)
        except OSError:
            continue
        if int(fields["PPid"]) == pid:
            found.append((int(entry.name), int(fields["Uid"].split()[0])))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _uid_processes(uid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            if any(line.split()[1:2] == [str(uid)] for line in status.splitlines() if line.startswith("Uid:")):
                found.append(int(entry.name))
    return found


def test_each_job_is_a_fresh_process_that_is_pid_1_of_its_own_namespace(sandbox):
    leak = "import builtins\nbuiltins.LEAKED = 1\ndef f():\n    return 1\n"
    probe = "import builtins, os\ndef f():\n    return (os.getpid(), hasattr(builtins, 'LEAKED'))\n"
    assert sandbox.run(leak, [TestCase.assertion("assert f() == 1")]).status is ExecutionStatus.PASSED
    result = sandbox.run(probe, [TestCase.assertion("assert f() == (1, False)")])
    assert result.status is ExecutionStatus.PASSED, result.error


def test_landlock_applied_while_the_child_waits_still_confines_the_jobs_writes_to_its_directory(sandbox):
    program = textwrap.dedent(
        """
        import os

        def write(path):
            try:
                with open(path, "w") as handle:
                    handle.write("x")
                return "ok"
            except OSError as exc:
                return errno_name(exc)

        def errno_name(exc):
            import errno
            return errno.errorcode.get(exc.errno, str(exc.errno))

        here = os.getcwd()

        def home_and_tmp_are_here():
            return os.environ['HOME'] == os.environ['TMPDIR'] == here

        def write_in(where, name):
            return write(os.path.join(here if where == "here" else os.path.dirname(here), name))
        """
    )
    tests = [  # the program reports what it sees: the tests' own code runs in the judge, not in the job
        TestCase.assertion("assert home_and_tmp_are_here() is True"),
        TestCase.assertion("assert write_in('here', 'mine.txt') == 'ok'"),
        TestCase.assertion("assert write_in('beside', 'beside.txt') == 'EACCES'"),
        TestCase.assertion("assert write('/tmp/outside.txt') == 'EACCES'"),
        TestCase.assertion("assert write('/dev/null') == 'ok'"),
    ]
    result = sandbox.run(program, tests)
    assert result.per_test == (True,) * len(tests), result.error
    assert not Path("/tmp/outside.txt").exists()


def test_large_program_and_stdin_reach_the_child_whole(sandbox):
    blob = "a" * 300_000  # several times a pipe's buffer
    program = f"import sys\nBLOB = {blob!r}\ndata = sys.stdin.read()\nprint(len(BLOB), len(data), data[-3:])\n"
    stdin = "0123456789" * 100_000 + "end"
    result = sandbox.run(program, [TestCase.stdio(stdin, f"300000 {len(stdin)} end\n")])
    assert result.status is ExecutionStatus.PASSED, (result.error, result.stdout[:200])


def test_the_prepared_child_waits_as_root_and_a_dead_one_is_replaced():
    with Sandbox(SandboxConfig(isolation=IsolationLevel.FULL, timeout_s=3.0, memory_limit_mb=1024)) as box:
        square = [TestCase.assertion("assert f(3) == 9")]
        assert box.run("def f(x):\n    return x * x\n", square).status is ExecutionStatus.PASSED
        server = box.server_pid
        assert server is not None
        prepared = settled(lambda: [uid for _, uid in _children(server)], lambda uids: uids == [0])
        assert prepared == [0]  # one child, waiting for the next job, not yet the sandbox uid
        for settle in (True, False):  # killed well before the job is sent, or while it is being sent
            victim = _children(server)[0][0]
            os.kill(victim, signal.SIGKILL)
            while settle and _alive(victim):
                time.sleep(0.01)
            result = box.run("def f(x):\n    return x * x\n", square)
            assert result.status is ExecutionStatus.PASSED, result.error
        assert box.server_pid == server
        waiting = [pid for pid, _ in _children(server)]
    assert waiting and not any(_alive(pid) for pid in waiting)


def test_a_running_job_dies_with_its_server():
    config = SandboxConfig(isolation=IsolationLevel.FULL, timeout_s=2.0, memory_limit_mb=1024)
    with Sandbox(config) as box:
        uid = box.server_info["sandbox_uid"]
        sleeper = ("import time\ntime.sleep(60)\n", [TestCase.assertion("assert True")])
        runner = threading.Thread(target=box.run, args=sleeper)
        runner.start()
        deadline = time.monotonic() + 10
        while not _uid_processes(uid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _uid_processes(uid), "the job never started"
        os.kill(box.server_pid, signal.SIGKILL)
        deadline = time.monotonic() + 2  # the job sleeps for 60 s: only the parent-death signal ends it this soon
        while _uid_processes(uid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _uid_processes(uid) == []
        runner.join(30)  # the sandbox restarts its server and reruns the job, which then times out
        assert not runner.is_alive()


def test_scratch_is_a_capped_in_memory_filesystem_private_to_the_server():
    config = SandboxConfig(isolation=IsolationLevel.FULL, timeout_s=3.0, memory_limit_mb=1024, scratch_mb=2)
    with Sandbox(config) as box:
        assert "scratch_tmpfs" in box.features
        root = box.server_info["scratch_root"]
        program = textwrap.dedent(
            """
            import errno, os

            def fill(megabytes):
                try:
                    for i in range(megabytes):
                        with open(f"part{i}", "wb") as handle:
                            handle.write(b"x" * (1 << 20))
                    return "ok"
                except OSError as exc:
                    return errno.errorcode[exc.errno]

            def many_files(count):
                try:
                    for i in range(count):
                        open(f"empty{i}", "w").close()
                    return "ok"
                except OSError as exc:
                    return errno.errorcode[exc.errno]
            """
        )
        tests = [
            TestCase.assertion("assert fill(1) == 'ok'"),
            TestCase.assertion("assert fill(4) == 'ENOSPC'"),  # 2 MiB for all of a job's files, each under max_file_mb
        ]
        result = box.run(program, tests)
        assert result.per_test == (True, True), result.error
        result = box.run(program, [TestCase.assertion("assert many_files(2000) == 'ENOSPC'")])  # 1024 inodes
        assert result.status is ExecutionStatus.PASSED, result.error
        mounts = Path(f"/proc/{box.server_pid}/mountinfo").read_text().splitlines()
        assert any(line.split()[4] == root and " - tmpfs " in line for line in mounts)
        # The owner's own view of the directory never held a job's files; the server's view is empty after the job.
        assert os.listdir(root) == []
        assert box.scratch_view == f"/proc/{box.server_pid}/root{root}"
        (next_job,) = settled(lambda: os.listdir(box.scratch_view), lambda entries: len(entries) == 1)
        assert os.listdir(os.path.join(box.scratch_view, next_job)) == []
    assert not os.path.exists(root)


def test_children_inherit_a_clean_environment_and_standard_streams_from_the_server(sandbox):
    program = textwrap.dedent(
        """
        import os, sys, tempfile

        print("to stdout")
        print("to stderr", file=sys.stderr)

        def environment():
            return sorted(os.environ)

        def places():
            return (os.environ["HOME"] == os.environ["TMPDIR"] == os.getcwd() == tempfile.gettempdir(), sys.argv)
        """
    )
    tests = [
        TestCase.assertion("assert environment() == ['HOME', 'LANG', 'PATH', 'TMPDIR', 'USER']"),
        TestCase.assertion("assert places() == (True, ['program'])"),
    ]
    result = sandbox.run(program, tests)
    assert result.per_test == (True, True), result.error
    assert result.stdout == "to stdout\n"
    assert result.stderr == "to stderr\n"


def test_each_job_gets_a_fresh_private_directory_whatever_the_last_one_left_in_its_own(sandbox):
    messy = textwrap.dedent(
        """
        import os

        os.makedirs("deep/er", exist_ok=True)
        open("deep/er/file", "w").write("x")
        os.chmod("deep", 0)
        os.symlink("/etc/passwd", "link")
        os.chmod(".", 0o777)
        os.setxattr(".", "user.note", b"for the next job")

        def f():
            return sorted(os.listdir("."))
        """
    )
    assert sandbox.run(messy, [TestCase.assertion("assert f() == ['deep', 'link']")]).status is ExecutionStatus.PASSED
    probe = textwrap.dedent(
        """
        import os, stat

        def f():
            return os.listdir("."), stat.S_IMODE(os.stat(".").st_mode), os.listxattr(".")
        """
    )
    result = sandbox.run(probe, [TestCase.assertion("assert f() == ([], 0o700, [])")])
    assert result.status is ExecutionStatus.PASSED, result.error
    assert os.path.exists("/etc/passwd")


def test_a_job_gets_its_own_limits_when_they_differ_from_those_set_ahead_for_it():
    """The waiting child sets the last job's rlimits ahead; a job that asks for others must still get its own. A
    timed-out test makes the rest of that job run with less time left (a lower CPU limit), then the next job, forked
    while that rerun was going, asks for the full one again."""
    config = SandboxConfig(isolation=IsolationLevel.FULL, timeout_s=1.0, max_job_s=20, memory_limit_mb=1024)
    with Sandbox(config) as box:
        program = "import resource, time\ndef cpu():\n    return resource.getrlimit(resource.RLIMIT_CPU)\n"
        program += "def nap():\n    time.sleep(3)\n"
        sleep, lower = TestCase.assertion("assert nap() is None"), TestCase.assertion("assert cpu()[0] < 21")
        first = box.run(program, [sleep, lower])
        assert first.per_test_status == (ExecutionStatus.TIMEOUT, ExecutionStatus.PASSED), first.error
        full = box.run(program, [TestCase.assertion("assert cpu() == (21, 21)")])
        assert full.status is ExecutionStatus.PASSED, full.error
