"""Samplers hosted in Ray actors: one actor per GPU (or per tensor-parallel group, in its own placement group), CPU
actors when there is no GPU. Problems are sharded across actors and results come back in input order.

:class:`SamplerWorker` is the plain class an actor hosts; :class:`SamplerPool` drives the actors. An actor that dies
is restarted by Ray (``max_restarts``) and its in-flight shard retried (``max_task_retries``); a shard whose actor is
gone for good is retried on another actor. Adapters loaded with :meth:`SamplerPool.load_adapter` are re-applied
after a restart, because every ``generate`` call names the adapter the worker must serve.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from btp_ray.data.types import Problem
from btp_ray.sampling.config import Backend, SamplerConfig
from btp_ray.sampling.placement import EnginePlacement
from btp_ray.sampling.types import Candidate, GenerationParams, SamplerError, SamplerIdentity

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdapterRef:
    """A LoRA adapter folder and the name it is served under."""

    path: str
    name: str


class SamplerWorker:
    """Builds a sampler from its config and serves generate calls (the body of a :data:`SamplerActor`)."""

    def __init__(self, config: SamplerConfig, api_key: str | None = None) -> None:
        from btp_ray.sampling import build_sampler

        self.sampler = build_sampler(config, api_key=api_key)
        self._adapter: AdapterRef | None = None

    def generate(
        self, problems: Sequence[Problem], params: GenerationParams, adapter: AdapterRef | None = None
    ) -> list[list[Candidate]]:
        if adapter is not None and adapter != self._adapter:
            self.load_adapter(adapter)
        return self.sampler.generate(problems, params)

    def load_adapter(self, adapter: AdapterRef) -> SamplerIdentity:
        self.sampler.load_adapter(adapter.path, adapter.name)
        self._adapter = adapter
        return self.sampler.identity

    def reload_weights(self, path: str) -> float:
        """Serve the full fine-tune saved in ``path`` from now on, without restarting; returns the seconds taken."""
        from btp_ray.sampling.weights import reload_sampler_weights

        return reload_sampler_weights(self.sampler, path)

    def identity(self) -> SamplerIdentity:
        return self.sampler.identity

    def usage(self) -> dict[str, Any]:
        return self.sampler.usage()

    def pid(self) -> int:
        return os.getpid()

    def node_id(self) -> str:
        """The Ray node this worker runs on (to check placement)."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def close(self) -> None:
        self.sampler.close()


@dataclass(frozen=True)
class SamplerPoolConfig:
    """How many sampler actors and what each one reserves.

    ``num_actors`` None means one per engine of the sampler config (``num_engines``). ``num_gpus_per_actor`` None
    means 1 for local backends on CUDA (``tensor_parallel_size`` GPUs, in a placement group, for TP) and 0 otherwise.
    """

    num_actors: int | None = None
    num_cpus_per_actor: float = 1.0
    num_gpus_per_actor: float | None = None
    max_restarts: int = 2
    max_task_retries: int = -1
    shard_retries: int = 2

    def __post_init__(self) -> None:
        if self.num_actors is not None and self.num_actors < 1:
            raise ValueError(f"SamplerPoolConfig.num_actors must be >= 1 or None, got {self.num_actors}")
        if self.num_cpus_per_actor < 0:
            raise ValueError(f"SamplerPoolConfig.num_cpus_per_actor must be >= 0, got {self.num_cpus_per_actor}")
        if self.num_gpus_per_actor is not None and self.num_gpus_per_actor < 0:
            raise ValueError(
                f"SamplerPoolConfig.num_gpus_per_actor must be >= 0 or None, got {self.num_gpus_per_actor}"
            )
        if self.max_restarts < -1 or self.max_task_retries < -1 or self.shard_retries < 0:
            raise ValueError("SamplerPoolConfig.max_restarts / max_task_retries must be >= -1 and shard_retries >= 0")


class SamplerPool:
    """A pool of sampler actors with the :class:`~btp_ray.sampling.base.Sampler`-like ``generate``.

    Needs ``ray.init`` to have been called. Use as a context manager or call :meth:`close`. With ``placement``
    (:class:`~btp_ray.sampling.placement.EnginePlacement`) there is one actor per engine placement group, on the
    node the placement chose; the pool does not own the groups (``placement.remove()`` frees them).
    """

    def __init__(
        self,
        config: SamplerConfig,
        pool: SamplerPoolConfig | None = None,
        *,
        api_key: str | None = None,
        placement: EnginePlacement | None = None,
    ) -> None:
        import ray

        if not ray.is_initialized():
            raise SamplerError("SamplerPool needs a running Ray: call ray.init() first")
        self.config = config
        self.pool_config = pool or SamplerPoolConfig()
        self._next_actor = -1
        self._adapter: AdapterRef | None = None
        self._placement_groups: list[Any] = []
        self._placement = placement
        count = len(placement.groups) if placement is not None else self.pool_config.num_actors or config.num_engines
        self.actors = [self._start_actor(api_key, index) for index in range(count)]

    def _start_actor(self, api_key: str | None, index: int = 0) -> Any:
        import ray

        backend = self.config.resolved_backend()
        local_gpu = backend in (Backend.HF, Backend.VLLM) and self.config.resolved_device() == "cuda"
        gpus = self.pool_config.num_gpus_per_actor
        if gpus is None:
            gpus = 1.0 if local_gpu else 0.0
        options: dict[str, Any] = {
            "num_cpus": self.pool_config.num_cpus_per_actor,
            "num_gpus": gpus,
            "max_restarts": self.pool_config.max_restarts,
            "max_task_retries": self.pool_config.max_task_retries,
        }
        tp = self.config.tensor_parallel_size
        if self._placement is not None:
            # In its engine's group: with TP > 1 vLLM's Ray workers take the bundles' GPUs; at TP 1 the actor
            # itself holds bundle 0's share, so Ray sets its CUDA_VISIBLE_DEVICES to that one GPU.
            share = self._placement.config.bundle_share if tp == 1 else 0.0
            accelerator = self._placement.config.accelerator
            options.update(num_gpus=share if accelerator == "GPU" else 0.0)
            if accelerator != "GPU" and share:
                options["resources"] = {accelerator: share}
            options["scheduling_strategy"] = self._placement.scheduling_strategy(index)
        elif local_gpu and backend is Backend.VLLM and tp > 1:
            from ray.util.placement_group import placement_group
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            # One bundle per GPU; vLLM's Ray executor places its TP workers in the actor's placement group.
            group = placement_group([{"GPU": 1, "CPU": 1}] * tp, strategy="PACK")
            ray.get(group.ready())
            self._placement_groups.append(group)
            options.update(
                num_gpus=0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=group, placement_group_capture_child_tasks=True
                ),
            )
        return ray.remote(SamplerWorker).options(**options).remote(self.config, api_key)

    def __enter__(self) -> SamplerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def generate(self, problems: Sequence[Problem], params: GenerationParams) -> list[list[Candidate]]:
        """Candidates for each problem, in input order; problems are split into one contiguous shard per actor."""
        import ray
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        if not problems:
            return []
        size = math.ceil(len(problems) / len(self.actors))
        shards = [list(problems[i : i + size]) for i in range(0, len(problems), size)]
        results: list[list[list[Candidate]] | None] = [None] * len(shards)
        pending = {self._submit(index, shards[index], params): (index, 0) for index in range(len(shards))}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            index, tries = pending.pop(ref)
            try:
                results[index] = ray.get(ref)
            except (ActorDiedError, ActorUnavailableError, RayActorError) as exc:
                if tries >= self.pool_config.shard_retries:
                    raise SamplerError(f"shard {index} failed {tries + 1} times: {exc}", retryable=True) from exc
                logger.warning("sampler actor for shard %d died (%s); retrying on another actor", index, exc)
                pending[self._submit(index + tries + 1, shards[index], params)] = (index, tries + 1)
        return [candidates for shard in results if shard is not None for candidates in shard]

    def submit(self, problems: Sequence[Problem], params: GenerationParams) -> Any:
        """Start generation for ``problems`` on the next actor (round robin); returns one ``ray.ObjectRef`` to the
        candidates, so callers can overlap sampling with other work. A killed actor's call is retried by Ray
        (``max_task_retries``) on the restarted actor, with the current adapter."""
        if not problems:
            raise ValueError("SamplerPool.submit needs at least one problem")
        self._next_actor += 1
        return self._submit(self._next_actor, list(problems), params)

    def _submit(self, actor_index: int, shard: list[Problem], params: GenerationParams) -> Any:
        actor = self.actors[actor_index % len(self.actors)]
        return actor.generate.remote(shard, params, self._adapter)

    def load_adapter(self, path: str, name: str) -> list[SamplerIdentity]:
        """Serve the adapter on every actor from now on (broadcast); returns each actor's new identity."""
        import ray

        self._adapter = AdapterRef(path=str(path), name=name)
        return ray.get([actor.load_adapter.remote(self._adapter) for actor in self.actors])

    def reload_weights(self, path: str) -> list[float]:
        """Every actor swaps in a full fine-tune's weights from ``path`` in place (the engines keep running); returns
        each actor's seconds. An actor restarted later starts from the configured model again."""
        import ray

        return ray.get([actor.reload_weights.remote(str(path)) for actor in self.actors])

    def identities(self) -> list[SamplerIdentity]:
        import ray

        return ray.get([actor.identity.remote() for actor in self.actors])

    def usage(self) -> list[dict[str, Any]]:
        import ray

        return ray.get([actor.usage.remote() for actor in self.actors])

    def close(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []
        for group in self._placement_groups:
            remove_placement_group(group)
        self._placement_groups = []
