"""Hostile programs against the real sandbox: each is contained, never a false pass, and leaves nothing behind.

Every test runs real untrusted code in the real fork server with full isolation, then checks the specific outcome,
that the server survived (same pid, next job passes), that no process of the sandbox uid is left and that the
scratch tree holds nothing but the next job's empty directory.
"""

from __future__ import annotations

import os
import socket
import textwrap
from pathlib import Path

import pytest

from btp_ray.data.types import TestCase
from btp_ray.execution import ExecutionStatus, IsolationLevel, Sandbox, SandboxConfig
from tests.sandbox_helpers import settled

SECRET = "sk-planted-secret-7f3a9"
SQUARE_TESTS = [TestCase.assertion("assert f(2) == 4"), TestCase.assertion("assert f(3) == 9")]


@pytest.fixture(scope="module")
def sandbox():
    previous = os.environ.get("OPENAI_API_KEY")
    os.environ["OPENAI_API_KEY"] = SECRET  # planted in the owner's environment before the server starts
    try:
        with Sandbox(
            SandboxConfig(isolation=IsolationLevel.FULL, timeout_s=1.5, max_job_s=20, memory_limit_mb=1024)
        ) as box:
            yield box
    finally:
        if previous is None:
            os.environ.pop("OPENAI_API_KEY", None)
        else:
            os.environ["OPENAI_API_KEY"] = previous


def _sandbox_processes(uid: int) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        uid_line = next((line for line in status.splitlines() if line.startswith("Uid:")), "")
        if uid_line and int(uid_line.split()[1]) == uid:
            found.append(entry.name)
    return found


def _nothing_but_one_empty_directory(scratch: str) -> bool:
    """The scratch tree between jobs: only the directory made for the next job, still empty."""
    entries = os.listdir(scratch)
    return len(entries) == 1 and os.listdir(os.path.join(scratch, entries[0])) == []


@pytest.fixture
def contained(sandbox):
    """After the test: the server is the same process, still works, and nothing of the job is left."""
    server_pid = sandbox.server_pid
    yield sandbox
    assert sandbox.server_pid == server_pid
    assert sandbox.run("def f(x):\n    return x * x\n", SQUARE_TESTS).status is ExecutionStatus.PASSED
    for uid in (sandbox.server_info["sandbox_uid"], sandbox.server_info["judge_uid"]):
        assert settled(lambda uid=uid: _sandbox_processes(uid), lambda found: found == []) == []
    assert settled(lambda: _nothing_but_one_empty_directory(sandbox.scratch_view), bool)


def _prog(source: str) -> str:
    return textwrap.dedent(source).strip() + "\n"


def test_infinite_loop_times_out_and_other_tests_are_still_judged(contained):
    program = _prog(
        """
        def f(x):
            while x == 2:
                pass
            return x * x
        """
    )
    result = contained.run(program, SQUARE_TESTS)
    assert result.per_test == (False, True)
    assert result.per_test_status[0] is ExecutionStatus.TIMEOUT
    assert result.status is ExecutionStatus.TIMEOUT


def test_loop_catching_base_exception_is_killed_from_outside(contained):
    program = _prog(
        """
        def f(x):
            while True:
                try:
                    while True:
                        pass
                except BaseException:
                    pass
        """
    )
    result = contained.run(program, SQUARE_TESTS[:1])
    assert result.status is ExecutionStatus.TIMEOUT
    assert result.passed == 0


def test_signal_and_alarm_tampering_does_not_stop_the_timeout(contained):
    program = _prog(
        """
        import signal
        for sig in (signal.SIGALRM, signal.SIGTERM, signal.SIGINT, signal.SIGXCPU, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        signal.alarm(0)
        signal.setitimer(signal.ITIMER_REAL, 0)
        def f(x):
            while True:
                pass
        """
    )
    result = contained.run(program, SQUARE_TESTS[:1])
    assert result.status is ExecutionStatus.TIMEOUT


def test_raising_rlimits_is_refused_and_memory_stays_capped(contained):
    program = _prog(
        """
        import resource
        def f(x):
            try:
                resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
                return "raised"
            except (ValueError, OSError):
                return "refused"
        def g():
            return len(bytearray(16 << 30))
        """
    )
    result = contained.run(
        program, [TestCase.assertion("assert f(0) == 'refused'"), TestCase.assertion("assert g() == 16 << 30")]
    )
    assert result.per_test == (True, False)
    assert result.per_test_status[1] is ExecutionStatus.MEMORY_LIMIT


def test_memory_bomb_is_a_memory_limit_not_a_crash_of_the_server(contained):
    program = _prog(
        """
        def f(x):
            hog = []
            while True:
                hog.append(bytes(256 << 20))
        """
    )
    result = contained.run(program, SQUARE_TESTS)
    assert result.per_test == (False, False)
    assert result.status is ExecutionStatus.MEMORY_LIMIT


def test_fork_bomb_is_contained_and_swept(contained):
    program = _prog(
        """
        import os
        def f(x):
            while True:
                try:
                    os.fork()
                except OSError:
                    pass
        """
    )
    result = contained.run(program, SQUARE_TESTS[:1], timeout_s=2.0)
    assert result.status is ExecutionStatus.TIMEOUT
    assert result.passed == 0


def test_setsid_daemon_and_subprocess_are_killed_with_the_job(contained):
    program = _prog(
        """
        import os, subprocess, time
        def f(x):
            subprocess.Popen(["sleep", "7654321"], start_new_session=True)
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    time.sleep(7654321)
                os._exit(0)
            return x * x
        """
    )
    result = contained.run(program, SQUARE_TESTS[:1])
    assert result.status is ExecutionStatus.PASSED  # the daemon cannot delay the verdict

    def leftovers() -> list[str]:
        found = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and b"7654321" in (entry / "cmdline").read_bytes():
                    found.append(entry.name)
            except OSError:
                continue
        return found

    assert settled(leftovers, lambda found: found == []) == []


def test_lingering_non_daemon_thread_does_not_hang_the_job(contained):
    program = _prog(
        """
        import threading, time
        threading.Thread(target=time.sleep, args=(1000,), daemon=False).start()
        def f(x):
            return x * x
        """
    )
    result = contained.run(program, SQUARE_TESTS)
    assert result.status is ExecutionStatus.PASSED
    assert result.per_test == (True, True)


def test_segfault_via_ctypes_is_a_crash_of_that_test_only(contained):
    program = _prog(
        """
        import ctypes
        def f(x):
            if x == 2:
                ctypes.string_at(0)
            return x * x
        """
    )
    result = contained.run(program, SQUARE_TESTS)
    assert result.per_test == (False, True)
    assert result.per_test_status[0] is ExecutionStatus.CRASHED
    assert "signal" in result.error


def test_gigabyte_to_stdout_hits_the_output_limit(contained):
    program = _prog(
        """
        import sys
        def f(x):
            chunk = "x" * (1 << 20)
            for _ in range(1024):
                sys.stdout.write(chunk)
            return x * x
        """
    )
    result = contained.run(program, SQUARE_TESTS[:1])
    assert result.status is ExecutionStatus.OUTPUT_LIMIT
    assert len(result.stdout) < (1 << 17)


def test_huge_file_is_refused_by_the_file_size_limit(contained):
    program = _prog(
        """
        def f(x):
            with open("big.bin", "wb") as out:
                for _ in range(64):
                    out.write(bytes(1 << 20))
            return x * x
        """
    )
    result = contained.run(program, SQUARE_TESTS[:1])
    assert result.status is ExecutionStatus.FAILED
    assert "File too large" in result.error


def test_directories_nested_past_the_recursion_limit_are_still_cleared(contained):
    """Deeper than shutil.rmtree can recurse: the server replaces its scratch tmpfs instead of dying over it."""
    program = _prog(
        """
        import os
        for _ in range(3000):
            os.mkdir("d")
            os.chdir("d")

        def f(x):
            return x * x
        """
    )
    assert contained.run(program, SQUARE_TESTS).status is ExecutionStatus.PASSED


def test_files_outside_scratch_cannot_be_deleted_or_written(contained, tmp_path):
    # World-writable decoy: only the sandbox (uid change + Landlock), not file permissions, protects it.
    decoy_dir = Path("/tmp") / f"btp-decoy-{os.getpid()}"
    decoy_dir.mkdir(exist_ok=True)
    decoy_dir.chmod(0o777)
    decoy = decoy_dir / "decoy.txt"
    decoy.write_text("original")
    decoy.chmod(0o666)
    try:
        program = _prog(
            f"""
            import os
            def attack():
                outcomes = []
                for action in (lambda: os.remove({str(decoy)!r}),
                               lambda: open({str(decoy)!r}, "w").write("pwned"),
                               lambda: open({str(decoy_dir / "new.txt")!r}, "w").write("dropped")):
                    try:
                        action()
                        outcomes.append("done")
                    except OSError as exc:
                        outcomes.append(type(exc).__name__)
                return outcomes
            """
        )
        result = contained.run(program, [TestCase.assertion("assert attack() == ['done', 'done', 'done']")])
        assert result.status is ExecutionStatus.FAILED
        assert "PermissionError" in result.error
        assert decoy.read_text() == "original"
        assert sorted(p.name for p in decoy_dir.iterdir()) == ["decoy.txt"]
    finally:
        for path in decoy_dir.iterdir():
            path.unlink()
        decoy_dir.rmdir()


def test_planted_secret_is_not_visible_in_environ_or_proc(contained):
    program = _prog(
        f"""
        import os
        def leak():
            found = [os.environ.get("OPENAI_API_KEY", "")]
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        with open(f"/proc/{{pid}}/environ", "rb") as fh:
                            found.append(fh.read().decode("latin-1"))
                    except OSError:
                        pass
            try:
                with open(f"/proc/{{os.getppid()}}/environ", "rb") as fh:
                    found.append(fh.read().decode("latin-1"))
            except OSError:
                pass
            return any("{SECRET[:12]}" in text for text in found)
        """
    )
    result = contained.run(program, [TestCase.assertion("assert leak() is False")])
    assert result.status is ExecutionStatus.PASSED


def test_connecting_to_a_local_listener_fails(contained):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        program = _prog(
            f"""
            import socket
            def phone_home():
                try:
                    socket.create_connection(("127.0.0.1", {port}), timeout=1).sendall(b"stolen")
                    return "connected"
                except OSError as exc:
                    return type(exc).__name__
            """
        )
        result = contained.run(program, [TestCase.assertion("assert phone_home() == 'connected'")])
        assert result.status is ExecutionStatus.FAILED
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()


def test_killing_the_parent_and_everything_visible_spares_the_server(contained):
    program = _prog(
        """
        import os, signal
        def f(x):
            for target in (os.getppid(), -1):
                try:
                    os.kill(target, signal.SIGKILL)
                except OSError:
                    pass
            for pid in os.listdir("/proc"):
                if pid.isdigit() and int(pid) != os.getpid():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except OSError:
                        pass
            return x * x
        """
    )
    result = contained.run(program, SQUARE_TESTS)
    assert result.passed <= 2  # the program may kill itself; the server and this test process survive
    assert os.getpid() > 0


def test_exit_before_the_asserts_is_an_error_not_a_pass(contained):
    for program in ("import sys\nsys.exit(0)\n", "import os\nos._exit(0)\n", "raise SystemExit\n"):
        result = contained.run(program, SQUARE_TESTS)
        assert result.status is ExecutionStatus.ERROR, program
        assert result.per_test == (False, False)


def test_exit_inside_the_candidate_fails_each_test(contained):
    result = contained.run("import os\ndef f(x):\n    os._exit(0)\n", SQUARE_TESTS)
    assert result.per_test == (False, False)
    assert set(result.per_test_status) == {ExecutionStatus.CRASHED}


def test_always_equal_and_always_true_objects_never_pass(contained):
    program = _prog(
        """
        class Yes:
            def __eq__(self, other):
                return True
            def __bool__(self):
                return True
            __hash__ = object.__hash__
        class SneakyInt(int):
            def __eq__(self, other):
                return True
            __hash__ = int.__hash__
        def f(x):
            return Yes()
        def g(x):
            return SneakyInt(0)
        def h(x):
            return Yes()
        """
    )
    tests = [
        TestCase.assertion("assert f(2) == 4"),
        TestCase.assertion("assert g(3) == 9"),
        TestCase.assertion("assert h(1)"),
        TestCase.assertion("assert 4 == f(2)"),
    ]
    result = contained.run(program, tests)
    assert result.per_test == (False, False, False, False)
    assert result.status is ExecutionStatus.FAILED


def test_forged_result_lines_and_replaced_exec_do_not_count(contained):
    program = _prog(
        """
        import builtins, os, sys
        forged = (
            b'{"e":"loaded"}\\n{"e":"begin","k":0}\\n{"e":"ok","k":0}\\n'
            b'{"e":"value","k":0,"v":["b",true]}\\n{"e":"value","k":1,"v":["o","x"]}\\n'
        )
        for fd in range(3, 12):
            try:
                os.write(fd, forged)
            except OSError:
                pass
        print('{"e":"ok","k":0}')
        print("PASSED", file=sys.stderr)
        builtins.exec = lambda *a, **k: None
        builtins.eval = lambda *a, **k: 4
        def f(x):
            return -1
        """
    )
    result = contained.run(program, SQUARE_TESTS)
    assert result.per_test == (False, False)
    assert result.status is ExecutionStatus.FAILED
