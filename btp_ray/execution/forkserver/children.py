"""A job's children as the fork server forks them: the program child's body up to its harness, and the judge child.

The program child is forked ahead of its job (see :meth:`server.Server.prepare`): :func:`program_child` gives it its
descriptors and the job-independent isolation, waits for the job on :data:`wire.REQUEST_FD`, applies the rest and
runs the program harness. The judge child is forked once the job is known, only for jobs whose tests are not all
direct calls (:func:`fork_judge`). :class:`Child` is the server's handle on either: its pid and its pipes' server ends.
"""

import contextlib
import json
import os
import signal

from . import harness
from .wire import CALLS_FD, REPLIES_FD, REQUEST_FD, RESULT_FD, emitter, recv_body, write_all


class Child:
    """A forked child (waiting for its job, running it, or the job's judge), and the server's ends of its pipes."""

    def __init__(self, pid, pidfd, request_w, result_r, out_r, err_r, in_pidns, preset_limits, job_dir):
        self.pid, self.pidfd, self.in_pidns, self.preset_limits = pid, pidfd, in_pidns, preset_limits
        self.job_dir = job_dir
        self.request_w, self.result_r, self.out_r, self.err_r = request_w, result_r, out_r, err_r
        self.judge_ends = ()
        self.reaped = False

    def close_judge_ends(self):
        for fd in self.judge_ends:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.judge_ends = ()

    def close(self):
        """Release the pipes; a child that was never reaped (unused, or its supervision failed) is killed first."""
        if not self.reaped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self.reaped = True
        self.close_judge_ends()
        for fd in (self.request_w, self.result_r, self.out_r, self.err_r, self.pidfd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.request_w = self.result_r = self.out_r = self.err_r = self.pidfd = None


def program_child(fds, job_dir, isolation, preset_limits, encode):
    """Body of a prepared child: job-independent setup (with the rlimits ``preset_limits``), then wait for the
    request, isolate and run it. Never returns."""
    try:
        req_r, res_w, out_w, err_w, calls_r, rep_w = fds
        os.dup2(os.open("/dev/null", os.O_RDONLY), 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.dup2(res_w, RESULT_FD)
        os.dup2(req_r, REQUEST_FD)
        os.dup2(calls_r, CALLS_FD)
        os.dup2(rep_w, REPLIES_FD)
        os.closerange(REPLIES_FD + 1, 1 << 16)
        isolation.prepare_in_child(job_dir, preset_limits)
        body = recv_body(REQUEST_FD)
        if body is None:  # the server closed, or died, before it had a job for this child
            os._exit(0)
        os.close(REQUEST_FD)
        request = json.loads(body)
        if request.get("stdin") is not None:
            _stdin_from(request["stdin"])
        isolation.apply_in_child(job_dir, request["limits"], preset=preset_limits)
        harness.run_program(request, encode, emitter(RESULT_FD), os._exit)
    except BaseException as exc:
        try:
            os.write(2, f"sandbox child setup failed: {exc!r}\n".encode())
        finally:
            os._exit(71)
    os._exit(0)


def fork_judge(child, judge_body, limits, isolation, encode):
    """Fork the job's judge child: it runs the tests' code (never the program's) and calls the program child over
    the two pipes made with it. Forked only for jobs that have tests other than direct calls."""
    res_r, res_w = os.pipe()
    calls_w, rep_r = child.judge_ends
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(os.open("/dev/null", os.O_RDWR), 0)
            os.dup2(0, 1)
            os.dup2(0, 2)
            os.dup2(res_w, RESULT_FD)
            os.dup2(calls_w, CALLS_FD)
            os.dup2(rep_r, REPLIES_FD)
            os.closerange(REPLIES_FD + 1, 1 << 16)
            isolation.enter_judge(limits)
            spec = json.loads(judge_body)
            harness.run_judge(spec, encode, emitter(RESULT_FD), os._exit)
        finally:
            os._exit(71)
    os.close(res_w)
    return Child(pid, None, None, res_r, None, None, False, None, None)


def _stdin_from(text):
    """Make fd 0 a private in-memory file holding ``text``: nothing of it is visible in the scratch tree."""
    fd = os.memfd_create("stdin")
    write_all(fd, text.encode("utf-8", "surrogatepass"))
    os.lseek(fd, 0, os.SEEK_SET)
    os.dup2(fd, 0)
    os.close(fd)
