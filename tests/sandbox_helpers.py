"""Helpers shared by the sandbox tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def settled(probe: Callable[[], Any], done: Callable[[Any], bool], timeout_s: float = 2.0) -> Any:
    """``probe()`` once ``done(value)`` holds (or its last value after ``timeout_s``): the server replies as soon as
    a job's children have reported (killing them), and reaps them and removes their job directory while the owner
    reads the reply, before the next job starts."""
    deadline = time.monotonic() + timeout_s
    value = probe()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.01)
        value = probe()
    return value
