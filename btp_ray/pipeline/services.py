"""Starting a run's Ray side: Ray itself (local, or the cluster a job was submitted to), the sampler pools, the
executor pool and the replay actor, sized by the experiment's ``resources`` section."""

from __future__ import annotations

import logging
import os
from typing import Any

from btp_ray.execution import ExecutorPool
from btp_ray.execution import PoolConfig as ExecutorPoolConfig
from btp_ray.experiment_config import ExperimentConfig
from btp_ray.pipeline.run_dir import RunDirectory
from btp_ray.pipeline.runner import Services
from btp_ray.replay import create_replay_actor
from btp_ray.sampling import SamplerConfig, SamplerPool
from btp_ray.sampling.pool import PoolConfig as SamplerPoolConfig

logger = logging.getLogger(__name__)


def init_ray(config: ExperimentConfig, address: str | None = None) -> None:
    """Join the cluster at ``address`` / ``$RAY_ADDRESS`` (set by ``ray job submit``), or start a local one on
    loopback with the machine's CPUs (or ``resources.ray_num_cpus``)."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep a local Ray on loopback
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    ray.init(
        address="local",
        num_cpus=config.resources.ray_num_cpus or os.cpu_count(),
        include_dashboard=False,
        log_to_driver=config.debug,
    )


def _sampler_pool(config: ExperimentConfig, sampler: SamplerConfig) -> SamplerPool:
    resources = config.resources
    pool = SamplerPoolConfig(
        num_actors=resources.sampler_actors,
        num_cpus_per_actor=resources.sampler_cpus,
        num_gpus_per_actor=resources.sampler_gpus or None,
    )
    return SamplerPool(sampler, pool, api_key=sampler.api_key_from_env())


def start_services(config: ExperimentConfig, run: RunDirectory) -> Services:
    """Start every actor the run needs; the returned :class:`Services` closes them in reverse order."""
    closers: list[Any] = []
    try:
        resources = config.resources
        executor = ExecutorPool(
            config.execution,
            pool_config=ExecutorPoolConfig(
                num_executors=resources.num_executors,
                cpus_per_executor=resources.executor_cpus,
                resource_name=resources.executor_resource,
            ),
        )
        closers.append(executor.close)
        replay = create_replay_actor(config.replay, f"btp-replay-{run.path.name}", run.buffer_dir)
        closers.append(lambda: _kill(replay))
        source = _sampler_pool(config, config.sampling)
        closers.append(source.shutdown)
        target = None
        if config.training is not None and config.training.base_model != config.sampling.model:
            target_sampling = SamplerConfig(
                **{
                    **config.sampling.to_dict(),
                    "model": config.training.base_model,
                    "model_kind": None,
                    "backend": "auto",
                    "api_base": None,
                    "api_key_env": None,
                    "enable_lora": True,
                }
            )
            target = _sampler_pool(config, target_sampling)
            closers.append(target.shutdown)
    except BaseException:
        for closer in reversed(closers):
            closer()
        raise
    return Services(source=source, target=target, executor=executor, replay=replay, closers=closers)


def _kill(actor: Any) -> None:
    import ray

    ray.kill(actor, no_restart=True)
