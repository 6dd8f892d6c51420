"""The warm fork server: a small trusted process that forks one isolated child per run of untrusted code.

Started as ``python -I forkserver/__main__.py`` by :class:`btp_ray.execution.sandbox.Sandbox` with an empty
environment, so it imports nothing from btp_ray and only the standard library (``pyseccomp``/``seccomp``, when
installed, only in a short-lived helper that compiles the filter, see ``seccomp.py``). It never decides verdicts: it
runs the children, enforces the wall clock from outside, captures what they reported and printed, sweeps everything
they spawned, and hands the raw capture back (``supervise.py``).

Protocol with the owner (over the server's stdin/stdout, framed as in ``wire.py``): the first message is the
configuration; the server answers ``{"ok": true, "features": [...], "missing": {...}}``; then each run is three
messages, ``{"op": "run", ...}``, the program child's request and the judge's (maybe empty), and gets one response;
``{"op": "close"}`` or the end of its stdin stops it.

Each run gets a fresh child, forked before its request arrives: while one job runs, the server already forks and
prepares the next job's child (the job-independent part of the isolation, see ``isolation.py``), which then waits,
still privileged but already confined, for its request on a pipe. Only then does it apply the job-dependent rest and
run untrusted code (``children.py``, then ``harness.py``).
"""

import contextlib
import fcntl
import gc
import json
import os
import shutil
import signal
import struct
import sys
import tempfile
import termios
import time

from . import codec
from .children import Child, fork_judge, program_child
from .isolation import Isolation, within
from .linux import CLONE_NEWPID, PR_SET_PDEATHSIG, check, prctl, umount_detached, unshare
from .supervise import supervise
from .wire import recv, recv_body, send, send_body


class Server:
    """Owns the isolation, the scratch root and the loop that runs one child per request."""

    def __init__(self, config, out_fd):
        self.config = config
        self.out_fd = out_fd
        self.scratch_root = tempfile.mkdtemp(prefix="btp-sandbox-")
        os.chmod(self.scratch_root, 0o711)
        self.isolation = Isolation(config)
        self.encode = None
        self.counter = 0
        self.prepared = None
        self.prepare_while_running = False
        self.last_limits = None
        self.dying = []

    def start(self):
        """Set up the isolation, preload the configured modules and freeze the server's state; the hello reply."""
        self.isolation.setup_once(self.scratch_root)
        preloaded, failed = [], []
        for name in self.config["preload_modules"]:
            try:
                __import__(name)
                preloaded.append(name)
            except Exception as exc:
                failed.append(f"{name}: {exc}")
        codec.TRUSTED_PACKAGES.update(name.split(".")[0] for name in preloaded)
        self.encode = codec.build_encoder()
        self._set_up_what_children_inherit()
        # Two children at once are apart only when each job has its own PID namespace and is not the server's uid.
        self.prepare_while_running = self.isolation.own_pidns_fd is not None and self.isolation.drop_uid is not None
        gc.collect()
        gc.freeze()
        vm = _vm_size()
        return {
            "ok": True,
            "features": self.isolation.features,
            "missing": self.isolation.missing,
            "preloaded": preloaded,
            "preload_failed": failed,
            "server_vm_bytes": vm,
            "scratch_root": self.scratch_root,
            "sandbox_uid": self.isolation.drop_uid,
            "judge_uid": self.isolation.judge_uid,
            "landlock_abi": self.isolation.landlock_abi,
        }

    def _set_up_what_children_inherit(self):
        """The environment, argv and standard streams every child starts with, made once here rather than in each
        child: a child that makes them itself copies about 170 of the server's pages on the way (``HOME``,
        ``TMPDIR`` and the tempdir are set before each fork, see :meth:`prepare`). The server itself never writes to
        the standard streams (its protocol runs on other descriptors), so a child inherits them empty.
        """
        os.environ.clear()
        os.environ.update(PATH="/usr/local/bin:/usr/bin:/bin", LANG="C.UTF-8", USER="sandbox")
        sys.argv = ["program"]
        # The standard streams live as long as the server and its children: no context manager.
        sys.stdin = sys.__stdin__ = open(0, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
        sys.stdout = sys.__stdout__ = open(1, "w", errors="backslashreplace", closefd=False)  # noqa: SIM115
        sys.stderr = sys.__stderr__ = open(2, "w", errors="backslashreplace", closefd=False)  # noqa: SIM115

    def prepare(self):
        """Fork the next job's child ahead of its request, so that neither the fork nor the job-independent setup
        delays that job (they overlap the job before it). Its job directory is made first, fresh, so that the child
        can be confined to it before the job arrives. The child takes the last job's rlimits ahead; one waiting with
        a limit lower than the last job's is replaced, as it could not raise it."""
        if self.prepared is not None:
            if within(self.last_limits, self.prepared.preset_limits):
                return
            prepared, self.prepared = self.prepared, None
            self._retire(prepared)
        self.counter += 1
        job_dir = os.path.join(self.scratch_root, f"job{self.counter}")
        os.mkdir(job_dir, 0o700)
        if self.isolation.drop_uid is not None:
            os.chown(job_dir, self.isolation.drop_uid, self.isolation.drop_uid)
        os.environ["HOME"] = os.environ["TMPDIR"] = tempfile.tempdir = job_dir  # for the child to inherit
        try:
            self._fork_prepared(job_dir)
        except BaseException:
            self._remove_job_dir(job_dir)
            raise

    def _fork_prepared(self, job_dir):
        """Fork the child (in a new PID namespace when there are) with its six pipes; it waits in
        :func:`children.program_child`."""
        pipes = [os.pipe() for _ in range(6)]  # request, result, stdout, stderr, judge->program, program->judge
        (req_r, req_w), (res_r, res_w), (out_r, out_w), (err_r, err_w), (calls_r, calls_w), (rep_r, rep_w) = pipes
        child_ends, server_ends = (req_r, res_w, out_w, err_w, calls_r, rep_w), (req_w, res_r, out_r, err_r)
        judge_ends = (calls_w, rep_r)
        use_pidns = self.isolation.own_pidns_fd is not None
        child = None
        try:
            if use_pidns:
                unshare(CLONE_NEWPID)
            try:
                pid = os.fork()
                if pid == 0:
                    program_child(child_ends, job_dir, self.isolation, self.last_limits, self.encode)  # never returns
            finally:
                if use_pidns:
                    self.isolation.reset_pidns()
            child = Child(pid, None, *server_ends, use_pidns, self.last_limits, job_dir)
            child.judge_ends = judge_ends
            child.pidfd = os.pidfd_open(pid)
        except BaseException:
            if child is not None:
                child.close()
            else:
                for fd in (*server_ends, *judge_ends):
                    os.close(fd)
            raise
        finally:
            for fd in child_ends:
                os.close(fd)
        self.prepared = child

    def run(self, request, body, judge_body):
        """Run one job (``body``: the program child's request; ``judge_body``: the judge's, or empty) in the prepared
        child; the raw capture of the run (see ``supervise.py``)."""
        child = None
        self.last_limits = request["limits"]
        self.reap()
        try:
            for _ in range(2):
                self.prepare()
                child, self.prepared = self.prepared, None
                started = time.monotonic()
                if _deliver(child.request_w, body):
                    reply = self._supervise_job(request, child, judge_body, started)
                    if not _unread(child.request_w):
                        return reply
                # It died before it had read all of its job (killed from outside), so no job code ran: run the job
                # in a fresh child instead.
                self._retire(child)
                child = None
            raise OSError("two prepared children died before receiving their job")
        finally:
            if child is not None:
                self.dying.append(child)

    def _supervise_job(self, request, child, judge_body, started):
        """The run of a job its program child has received: fork its judge (if it has judged tests) and, when two
        children can run apart, the next job's child; then watch the run."""
        judge = None
        if judge_body:
            judge = fork_judge(child, judge_body, request["limits"], self.isolation, self.encode)
        child.close_judge_ends()
        if self.prepare_while_running:
            # The server would only wait for this job: fork the next one's child now, on the other core.
            with contextlib.suppress(Exception):
                self.prepare()
        try:
            return supervise(request, child, judge, started)
        finally:
            if judge is not None:
                self.dying.append(judge)

    def reap(self):
        """Reap the children of the last job (already killed) and remove its job directory. The server replies to a
        job as soon as its children have reported all they will, then reaps them while the owner reads the reply."""
        dying, self.dying = self.dying, []
        for child in dying:
            self._retire(child)

    def _retire(self, child):
        """Kill (if need be) and reap a child, then remove its job directory with whatever the job left there."""
        child.close()
        if child.job_dir is not None:
            self._remove_job_dir(child.job_dir)

    def _remove_job_dir(self, path):
        """What cannot be removed entry by entry (say, directories nested deeper than the recursion limit) goes with
        the whole tmpfs, replaced by a fresh one."""
        try:
            _remove_tree(path)
            return
        except (OSError, RecursionError):
            if "scratch_tmpfs" not in self.isolation.features:
                raise
        prepared, self.prepared = self.prepared, None
        if prepared is not None:  # its directory goes with the old tmpfs
            prepared.close()
        check(umount_detached(self.scratch_root), "umount scratch")
        self.isolation.mount_scratch(self.scratch_root)

    def close(self):
        """Reap and kill every child, and remove the scratch tree."""
        self.reap()
        if self.prepared is not None:
            self.prepared.close()
            self.prepared = None
        if "scratch_tmpfs" in self.isolation.features:
            umount_detached(self.scratch_root)
        shutil.rmtree(self.scratch_root, ignore_errors=True)


def _deliver(fd, body):
    """Hand the job to its prepared child (the request as the owner sent it); False if it died."""
    try:
        send_body(fd, body)
    except BrokenPipeError:
        return False
    return True


def _unread(fd):
    """Bytes written to a pipe that its reader has not read."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


def _remove_tree(path):
    """Remove a job directory and what the job left in it, raising what stops that."""
    try:
        os.rmdir(path)  # the usual job leaves nothing: one syscall instead of a tree walk
    except FileNotFoundError:
        pass
    except OSError:
        shutil.rmtree(path)


def _vm_size():
    """The server's virtual memory size in bytes (reported in the hello), 0 where ``/proc`` does not say."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def main():
    """Serve the owner that started this process, on its stdin and stdout, until it closes them or says close."""
    in_fd = os.dup(0)
    out_fd = os.dup(1)
    devnull = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1):
        os.dup2(devnull, fd)
    os.set_inheritable(in_fd, False)
    os.set_inheritable(out_fd, False)
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    config = recv(in_fd)
    if config is None:
        return
    if os.getppid() != config["owner_pid"]:
        return
    server = Server(config, out_fd)
    try:
        hello = server.start()
    except Exception as exc:
        send(out_fd, {"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        server.close()
        return
    send(out_fd, hello)
    try:
        _serve(server, in_fd, out_fd)
    finally:
        server.close()


def _serve(server, in_fd, out_fd):
    """The server loop: prepare the next child, read a run, reply, reap its children while the owner reads."""
    while True:
        # A failure to prepare is reported by the run that needs the child, which prepares again.
        with contextlib.suppress(Exception):
            server.prepare()
        body = recv_body(in_fd)
        if body is None:
            return
        request = json.loads(body)
        if request.get("op") == "close":
            return
        # A run is three frames: this control message, the program child's request, the judge's (maybe empty).
        child_body, judge_body = recv_body(in_fd), recv_body(in_fd)
        if child_body is None or judge_body is None:
            return
        try:
            reply = server.run(request, child_body, judge_body)
        except Exception as exc:
            reply = {"sandbox_error": f"{type(exc).__name__}: {exc}"}
        send(out_fd, reply)
        with contextlib.suppress(Exception):
            server.reap()
