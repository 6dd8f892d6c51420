"""Watching one job's run from the server: its children's events and output, the wall clock, the output caps.

The server never decides a verdict: it waits for the program child (and the judge child, if the job has one), keeps
what they report on :data:`wire.RESULT_FD` and what the program prints (up to ``keep_output_bytes``), enforces the
wall clock from outside (each test, and the loading, within ``test_timeout_s`` of the last progress; the whole run
within ``deadline_s``) and the caps on output and reported bytes, then kills what is left and hands the raw capture
back (:func:`supervise`).
"""

import contextlib
import os
import select
import signal
import time

from .wire import parse_event

# Events that mark progress: the next test starts now and has its own time.
PROGRESS_EVENTS = ("loaded", "value", "fail", "served", "verdict")


def supervise(request, child, judge, started):
    """The raw capture of the job's run (events, output, exit status, whether and where it timed out), once its
    children have reported all they will, or been killed."""
    return _Supervision(request, child, judge, started).run()


class _Supervision:
    """The state of one run while the server watches it: the pipes still open, what each child said, the deadlines."""

    def __init__(self, request, child, judge, started):
        self.child, self.judge, self.started = child, judge, started
        self.pidfd, self.res_r, self.out_r, self.err_r = child.pidfd, child.result_r, child.out_r, child.err_r
        self.judge_r = judge.result_r if judge is not None else None
        limits = request["limits"]
        self.keep = limits["keep_output_bytes"]
        self.max_output = limits["max_output_bytes"]
        self.max_result = limits["max_result_bytes"]
        self.test_timeout = request["test_timeout_s"]
        self.job_deadline = started + request["deadline_s"]
        self.phase_deadline = started + request["load_timeout_s"]
        self.phase = "load"
        self.buffers = {self.out_r: bytearray(), self.err_r: bytearray()}
        self.totals = {self.out_r: 0, self.err_r: 0}
        self.lines = {self.res_r: bytearray(), self.judge_r: bytearray()}
        self.result_total = 0
        self.events, self.judge_events = [], []
        self.timed_out = self.output_limit = False
        self.program_over = self.program_done = False
        self.judge_over = judge is None
        self.grace_deadline = None
        self.poller = select.poll()
        self.open_fds = {self.res_r, self.out_r, self.err_r} | ({self.judge_r} if judge is not None else set())
        for fd in self.open_fds:
            self.poller.register(fd, select.POLLIN)
        self.poller.register(self.pidfd, select.POLLIN)

    def run(self):
        self._watch()
        return self._finish()

    def _watch(self):
        """Read what the children send until the program is over (done, exited, killed) and has nothing more to
        say, and the judge is done; a deadline that passes first ends the program as timed out."""
        output = {self.out_r, self.err_r}
        while True:
            if self.program_done and self.open_fds & output:
                self._drain_output()
            program_finished = self.program_done or not self.open_fds & {self.res_r, *output}
            if self.program_over and program_finished and self.judge_over:
                return
            now = time.monotonic()
            deadline = self.grace_deadline if self.program_over else min(self.job_deadline, self.phase_deadline)
            if now >= deadline:
                if self.program_over:
                    return
                self._end_program(timed_out=True)
                continue
            for fd, _ in self.poller.poll(max(1, int((deadline - now) * 1000) + 1)):
                self._on_ready(fd)
                if self.output_limit:
                    self._end_program()
                    return

    def _on_ready(self, fd):
        if fd == self.pidfd:  # the program child exited
            self.poller.unregister(fd)
            if not self.program_over:
                self.program_over = True
                self.grace_deadline = time.monotonic() + (1.0 if self.child.in_pidns else 0.05)
            return
        if fd not in self.open_fds:
            return
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            self.poller.unregister(fd)
            self.open_fds.discard(fd)
            if fd == self.judge_r:
                self.judge_over = True
        elif fd in self.lines:
            self._on_event_bytes(fd, chunk)
        else:
            self._on_output(fd, chunk)

    def _on_event_bytes(self, fd, chunk):
        """Bytes of a child's event lines: each whole line is an event (a malformed one is dropped)."""
        self.result_total += len(chunk)
        if self.result_total > self.max_result:
            self.output_limit = True
            return
        buffer = self.lines[fd]
        buffer += chunk
        *complete, rest = bytes(buffer).split(b"\n")
        self.lines[fd] = bytearray(rest)
        for line in complete:
            event = parse_event(line)
            if event is not None:
                self._on_event(fd, event)

    def _on_event(self, fd, event):
        kind = event.get("e")
        if fd == self.judge_r:
            self.judge_events.append(event)
            if kind == "judge_done":
                self.judge_over = True
        else:
            self.events.append(event)
            if kind == "done":
                self.program_done = True
                self._end_program()
        if kind in PROGRESS_EVENTS:
            self.phase = event.get("k", self.phase) if kind != "loaded" else "tests"
            self.phase_deadline = time.monotonic() + self.test_timeout

    def _on_output(self, fd, chunk):
        """What the program printed: the first ``keep_output_bytes`` are kept, all of it is counted."""
        self.totals[fd] += len(chunk)
        room = self.keep - len(self.buffers[fd])
        if room > 0:
            self.buffers[fd] += chunk[:room]
        if self.totals[fd] > self.max_output:
            self.output_limit = True

    def _drain_output(self):
        """The program flushed its output before reporting done: take what is in the pipes, wait for nothing more."""
        for fd in (self.out_r, self.err_r):
            while fd in self.open_fds and select.select([fd], [], [], 0)[0] and self.totals[fd] <= self.max_output:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                self.totals[fd] += len(chunk)
                self.buffers[fd] += chunk[: max(0, self.keep - len(self.buffers[fd]))]
            if fd in self.open_fds:
                self.open_fds.discard(fd)
                self.poller.unregister(fd)

    def _end_program(self, timed_out=False):
        """Kill the program child (once), leaving it a grace period to be reaped and the judge to finish."""
        if timed_out:
            self.timed_out = True
        if not self.program_over:
            self.program_over = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.child.pid, signal.SIGKILL)
            self.grace_deadline = time.monotonic() + (1.0 if self.child.in_pidns or self.judge is not None else 0.05)

    def _finish(self):
        """Kill what is left of the run and build the reply."""
        child = self.child
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGKILL)
        if self.judge is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.judge.pid, signal.SIGKILL)
        status = _exit_status(child, wait=not self.program_done)
        if not child.in_pidns:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)
        return {
            "events": self.events,
            "judge_events": self.judge_events,
            "stdout": bytes(self.buffers[self.out_r]).decode("utf-8", "replace"),
            "stderr": bytes(self.buffers[self.err_r]).decode("utf-8", "replace"),
            "stdout_total": self.totals[self.out_r],
            "exit_code": status if status is not None and status >= 0 else None,
            "signal": -status if status is not None and status < 0 else None,
            "timed_out": self.timed_out,
            "timeout_phase": self.phase if self.timed_out else None,
            "output_limit": self.output_limit,
            "wall_s": time.monotonic() - self.started,
        }


def _exit_status(child, wait):
    """The child's exit code (negative: killed by that signal); None when it reported all it had and was killed
    without being waited for (it is reaped after the reply, see :meth:`server.Server.reap`)."""
    if not wait:
        return None
    _, status = os.waitpid(child.pid, 0)
    child.reaped = True
    return os.waitstatus_to_exitcode(status)
