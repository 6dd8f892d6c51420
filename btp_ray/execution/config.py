"""Configuration of the sandbox: resource limits, time limits and the minimum isolation a caller demands."""

from __future__ import annotations

import enum
import sys
from dataclasses import dataclass


class IsolationLevel(str, enum.Enum):
    """The minimum isolation a :class:`~btp_ray.execution.sandbox.Sandbox` must reach, or refuse to start.

    The sandbox always uses every layer the host offers; the level only says which layers it may not do without.
    """

    BASIC = "basic"  # rlimits, new session, no_new_privs, empty environment, scratch directory
    STANDARD = "standard"  # + PID/network/mount namespaces and Landlock filesystem rules
    FULL = "full"  # + IPC namespace, unprivileged uid, Landlock network/scope rules and seccomp

    @property
    def required_features(self) -> frozenset[str]:
        basic = frozenset({"rlimits", "no_new_privs", "new_session", "empty_environment", "scratch_dir"})
        standard = basic | {"pid_namespace", "network_namespace", "mount_namespace", "landlock"}
        full = standard | {"ipc_namespace", "unprivileged_uid", "landlock_network", "landlock_scope", "seccomp"}
        return {IsolationLevel.BASIC: basic, IsolationLevel.STANDARD: standard, IsolationLevel.FULL: full}[self]


DEFAULT_PRELOAD = (
    "re",
    "collections",
    "math",
    "itertools",
    "functools",
    "heapq",
    "bisect",
    "string",
    "typing",
    "random",
    "statistics",
    "fractions",
    "decimal",
    "datetime",
    "copy",
    "operator",
    "hashlib",
    "json",
    "numpy",
)


@dataclass(frozen=True)
class SandboxConfig:
    """Limits and policy of one sandbox (one warm fork server).

    ``timeout_s`` limits each test case and the loading of the program separately (wall clock, enforced from
    outside the child); ``max_job_s`` caps one job in all. ``job_budget_timeouts`` is the job's time budget for tests
    that hang, in multiples of ``timeout_s``: once a test has run past ``timeout_s``, the rest of the job gets at most
    ``(job_budget_timeouts - 1) * timeout_s`` more, and the tests it does not reach fail as ``NOT_RUN`` (see
    :mod:`btp_ray.execution.jobs`). ``memory_limit_mb`` is the child's address-space limit.
    ``max_file_mb`` caps each file a job writes; ``scratch_mb`` caps all of a job's scratch files together (and their
    number, at 256 per MiB), where the scratch directory lives in a memory-backed filesystem of the server's own (it
    needs a mount namespace).
    """

    isolation: IsolationLevel = IsolationLevel.BASIC
    timeout_s: float = 5.0
    max_job_s: float = 60.0
    job_budget_timeouts: float = 1.5
    memory_limit_mb: int = 4096
    max_processes: int = 64
    max_file_mb: int = 16
    scratch_mb: int = 256
    max_open_files: int = 256
    max_output_bytes: int = 8 << 20
    keep_output_bytes: int = 64 << 10
    max_program_bytes: int = 2 << 20
    preload_modules: tuple[str, ...] = DEFAULT_PRELOAD
    sandbox_uid: int | None = None
    python_executable: str = sys.executable
    startup_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "isolation", IsolationLevel(self.isolation))
        object.__setattr__(self, "preload_modules", tuple(self.preload_modules))
        for name in ("timeout_s", "max_job_s", "startup_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SandboxConfig.{name} must be > 0 seconds, got {getattr(self, name)!r}")
        if not self.job_budget_timeouts >= 1.0:
            raise ValueError(f"SandboxConfig.job_budget_timeouts must be >= 1, got {self.job_budget_timeouts!r}")
        if self.max_job_s < self.timeout_s:
            raise ValueError(f"SandboxConfig.max_job_s ({self.max_job_s}) must be >= timeout_s ({self.timeout_s})")
        if self.memory_limit_mb < 256:
            raise ValueError(f"SandboxConfig.memory_limit_mb must be >= 256, got {self.memory_limit_mb}")
        for name in ("max_processes", "max_file_mb", "scratch_mb", "max_program_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"SandboxConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.max_open_files < 16:
            raise ValueError(f"SandboxConfig.max_open_files must be >= 16, got {self.max_open_files}")
        if not 0 < self.keep_output_bytes <= self.max_output_bytes:
            raise ValueError("SandboxConfig.keep_output_bytes must be in (0, max_output_bytes]")
        if self.sandbox_uid is not None and not 0 < self.sandbox_uid < 2**31:
            raise ValueError(f"SandboxConfig.sandbox_uid must be a positive uid or None, got {self.sandbox_uid}")
