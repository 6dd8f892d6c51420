"""A pool of sandbox executors on Ray: one warm :class:`Sandbox` per CPU actor, results in input order.

:class:`SandboxExecutor` is the plain class (one sandbox, runs batches); the actor is ``ray.remote`` of it with
restarts and transparent task retries, so an executor that dies mid-batch is replaced and its in-flight batches are
re-run: every job gets exactly one result. A custom resource name lets cluster configs pin executors to CPU nodes.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from btp_ray.execution.config import SandboxConfig
from btp_ray.execution.results import ExecutionJob, ExecutionResult
from btp_ray.execution.sandbox import Sandbox

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolConfig:
    """Sizing and placement of the executor actors.

    ``num_executors`` None: one per ``cpus_per_executor`` CPUs of the cluster, or, with ``resource_name``, one per
    ``resource_per_executor`` units of that custom resource (e.g. ``sandbox`` in cluster YAMLs).
    """

    num_executors: int | None = None
    cpus_per_executor: float = 1.0
    resource_name: str | None = None
    resource_per_executor: float = 1.0
    max_batch_size: int = 16

    def __post_init__(self) -> None:
        if self.num_executors is not None and self.num_executors < 1:
            raise ValueError(f"PoolConfig.num_executors must be >= 1 or None, got {self.num_executors}")
        if not self.cpus_per_executor > 0:
            raise ValueError(f"PoolConfig.cpus_per_executor must be > 0, got {self.cpus_per_executor}")
        if not self.resource_per_executor > 0:
            raise ValueError(f"PoolConfig.resource_per_executor must be > 0, got {self.resource_per_executor}")
        if self.resource_name is not None and not self.resource_name.strip():
            raise ValueError("PoolConfig.resource_name must be a non-empty name or None")
        if self.max_batch_size < 1:
            raise ValueError(f"PoolConfig.max_batch_size must be >= 1, got {self.max_batch_size}")


def executors_for(resources: dict[str, float], pool_config: PoolConfig) -> int:
    """How many executors fit the cluster's ``resources`` under ``pool_config``."""
    name = pool_config.resource_name
    if name:
        count = int(resources.get(name, 0.0) // pool_config.resource_per_executor)
        if count < 1:
            raise ValueError(f"the cluster has no custom resource {name!r} (PoolConfig.resource_name)")
        return count
    count = int(resources.get("CPU", 0.0) // pool_config.cpus_per_executor)
    if count < 1:
        raise ValueError(
            f"the cluster has fewer CPUs than PoolConfig.cpus_per_executor={pool_config.cpus_per_executor}"
        )
    return count


class SandboxExecutor:
    """One warm sandbox; the body of each pool actor."""

    def __init__(self, config: SandboxConfig) -> None:
        self.sandbox = Sandbox(config)

    def run_batch(self, jobs: Sequence[ExecutionJob]) -> ExecutionResult | tuple[ExecutionResult, ...]:
        """Results of ``jobs`` in order (a bare result for one job, as Ray's ``num_returns=1`` expects)."""
        results = tuple(self.sandbox.run_many(jobs))
        return results[0] if len(results) == 1 else results

    def info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "server_pid": self.sandbox.server_pid, "features": sorted(self.sandbox.features)}

    def close(self) -> None:
        self.sandbox.close()


class ExecutorPool:
    """Ray actors, each holding one sandbox. ``run`` blocks; ``submit`` returns one ObjectRef per job."""

    def __init__(
        self,
        config: SandboxConfig | None = None,
        num_executors: int | None = None,
        pool_config: PoolConfig | None = None,
    ) -> None:
        import ray

        if not ray.is_initialized():
            raise RuntimeError("ExecutorPool needs a running Ray (call ray.init first)")
        self.config = config or SandboxConfig()
        self.pool_config = pool_config or PoolConfig(num_executors=num_executors)
        if num_executors is not None and self.pool_config.num_executors != num_executors:
            raise ValueError("pass num_executors either directly or in pool_config, not both")
        self.num_executors = self.pool_config.num_executors or executors_for(ray.cluster_resources(), self.pool_config)
        options: dict[str, Any] = {
            "num_cpus": self.pool_config.cpus_per_executor,
            "max_restarts": -1,
            "max_task_retries": -1,
        }
        if self.pool_config.resource_name:
            options["resources"] = {self.pool_config.resource_name: self.pool_config.resource_per_executor}
        self._actor_class = ray.remote(SandboxExecutor).options(**options)
        self.actors = [self._actor_class.remote(self.config) for _ in range(self.num_executors)]
        self._next = 0

    def submit(self, jobs: Sequence[ExecutionJob]) -> list[Any]:
        """Start ``jobs`` and return one ``ray.ObjectRef`` per job, in input order."""
        jobs = list(jobs)
        for job in jobs:
            if not isinstance(job, ExecutionJob):
                raise ValueError(f"ExecutorPool.submit expects ExecutionJob items, got {type(job).__name__}")
        if not jobs:
            return []
        batch = max(1, min(self.pool_config.max_batch_size, math.ceil(len(jobs) / (4 * len(self.actors)))))
        refs: list[Any] = []
        for offset in range(0, len(jobs), batch):
            chunk = jobs[offset : offset + batch]
            actor = self.actors[self._next % len(self.actors)]
            self._next += 1
            out = actor.run_batch.options(num_returns=len(chunk)).remote(chunk)
            refs.extend(out if len(chunk) > 1 else [out])
        return refs

    def run(self, jobs: Sequence[ExecutionJob]) -> list[ExecutionResult]:
        """Run ``jobs`` on all executors; results in input order."""
        import ray

        return list(ray.get(self.submit(jobs)))

    def executor_info(self) -> list[dict[str, Any]]:
        import ray

        return ray.get([actor.info.remote() for actor in self.actors])

    def close(self) -> None:
        """Stop every executor and its fork server."""
        import ray

        closing = [actor.close.remote() for actor in self.actors]
        try:
            ray.get(closing, timeout=30)
        except Exception as exc:  # an executor that is already gone has nothing left to close
            logger.warning("closing executors: %s", exc)
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []

    def __enter__(self) -> ExecutorPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
