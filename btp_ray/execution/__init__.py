"""Sandboxed execution of generated code: the isolated fork-server sandbox and the Ray pool of sandboxes.

Entry points: :class:`Sandbox` (one warm, isolated fork server), :class:`ExecutorPool` (one sandbox per Ray CPU
actor), :class:`ExecutionJob` in, :class:`ExecutionResult` out. Verdicts are decided outside the program's reach: by
the owner for direct calls, by a judge process that never runs the program for every other test (docs/sandbox.md).
"""

from btp_ray.execution.config import IsolationLevel, SandboxConfig
from btp_ray.execution.pool import ExecutorPool, PoolConfig, SandboxExecutor
from btp_ray.execution.results import ExecutionJob, ExecutionResult, ExecutionStatus
from btp_ray.execution.sandbox import Sandbox, SandboxClosedError, SandboxUnavailableError

__all__ = [
    "ExecutionJob",
    "ExecutionResult",
    "ExecutionStatus",
    "ExecutorPool",
    "IsolationLevel",
    "PoolConfig",
    "Sandbox",
    "SandboxClosedError",
    "SandboxConfig",
    "SandboxExecutor",
    "SandboxUnavailableError",
]
