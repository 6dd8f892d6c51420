"""Starting a run's Ray side: Ray itself (local, or the cluster a job was submitted to), the sampler pools, the
executor pool and the replay actor, sized by the experiment's ``resources`` section, bundled as one
:class:`Services` that a BTP run and every study use and close."""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from btp_ray.execution import ExecutorPool, PoolConfig
from btp_ray.experiment_config import ExperimentConfig
from btp_ray.pipeline.run_dir import RunDirectory
from btp_ray.pipeline.stream import SamplingService
from btp_ray.replay import create_replay_actor
from btp_ray.sampling import Backend, SamplerConfig, SamplerPool
from btp_ray.sampling.pool import SamplerPoolConfig
from btp_ray.sources.spec import SourceSpec

logger = logging.getLogger(__name__)


@dataclass
class Services:
    """The Ray-side parts of a run or a study; whoever started them closes them (also as a context manager).

    ``source`` gives the candidates BTP learns from: a sampler pool, a program source, or both mixed
    (:class:`MixedSampling`). ``target`` is the sampler of the model being fine-tuned when it is not the source.
    ``replay`` is the replay actor of a BTP run (studies fill their own buffers per arm)."""

    source: SamplingService
    target: SamplingService | None
    executor: ExecutorPool
    replay: Any = None
    closers: list[Any] = field(default_factory=list)

    @property
    def model(self) -> SamplingService:
        """The sampler of the model that is fine-tuned and evaluated: the target, or the source when they are one."""
        return self.target or self.source

    def close(self) -> None:
        for closer in reversed(self.closers):
            try:
                closer()
            except Exception as exc:  # closing is best effort: the run's results are already on disk
                logger.warning("closing %s: %s", closer, exc)

    def __enter__(self) -> Services:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def init_ray(config: ExperimentConfig, address: str | None = None, *, dashboard: bool = False) -> str | None:
    """Join the cluster at ``address`` / ``$RAY_ADDRESS`` (set by ``ray job submit``), or start a local one on
    loopback with the machine's CPUs (or ``resources.ray_num_cpus``). ``dashboard`` starts the local cluster's
    dashboard on 127.0.0.1 (so Tune trials can be watched there) and returns its address."""
    import ray

    if ray.is_initialized():
        return None
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep a local Ray on loopback
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        check_capacity(config, local=False)
        return None
    context = ray.init(
        address="local",
        num_cpus=config.resources.ray_num_cpus or os.cpu_count(),
        include_dashboard=dashboard,
        **({"dashboard_host": "127.0.0.1"} if dashboard else {}),
        log_to_driver=config.debug,
    )
    check_capacity(config, local=True)
    return (context.dashboard_url or None) if dashboard else None


def shutdown_ray(timeout_s: float = 60.0) -> bool:
    """``ray.shutdown()`` that cannot hang the process: Ray 2.60's shutdown sometimes blocks for good in an
    unanswered GCS pubsub RPC (ray-project/ray#44836 and relatives). After ``timeout_s`` the processes of the local
    cluster this driver started are killed, which fails the blocked RPC and lets the shutdown finish.
    Returns False when it had to force the shutdown."""
    import threading

    import ray

    if not ray.is_initialized():
        return True
    node = getattr(ray._private.worker, "_global_node", None)  # set only when this driver started the cluster
    worker = threading.Thread(target=ray.shutdown, name="ray-shutdown", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if not worker.is_alive():
        return True
    logger.warning("ray.shutdown() did not return in %.0f s; killing the local Ray processes", timeout_s)
    if node is not None:
        import contextlib

        import psutil

        # Everything this driver's cluster started descends from it; some (the dashboard agent) outlive the node's
        # own kill, so sweep them too.
        descendants = psutil.Process().children(recursive=True)
        node.kill_all_processes(check_alive=False, allow_graceful=False)
        for process in descendants:
            with contextlib.suppress(psutil.Error):
                process.kill()
    worker.join(30)
    return False


def _sampler_cpus(config: ExperimentConfig, sampler: SamplerConfig) -> float:
    """API samplers wait on the network and program sources generate nothing (they only score the programs they
    offer, one forward pass each): neither reserves a CPU, so they never crowd out the target's sampler or the
    learner."""
    return 0.0 if sampler.resolved_backend() in (Backend.OPENAI, Backend.PROGRAMS) else config.resources.sampler_cpus


def sampler_pool(config: ExperimentConfig, sampler: SamplerConfig) -> SamplerPool:
    """Sampler actors for ``sampler``, sized by the run's ``resources``."""
    resources = config.resources
    pool = SamplerPoolConfig(
        num_actors=resources.sampler_actors,
        num_cpus_per_actor=_sampler_cpus(config, sampler),
        num_gpus_per_actor=resources.sampler_gpus or None,
    )
    return SamplerPool(sampler, pool, api_key=sampler.api_key_from_env())


def executor_pool(config: ExperimentConfig) -> ExecutorPool:
    """Sandbox executor actors, sized and placed by the run's ``resources``."""
    resources = config.resources
    return ExecutorPool(
        config.execution,
        pool_config=PoolConfig(
            num_executors=resources.num_executors,
            cpus_per_executor=resources.executor_cpus,
            resource_name=resources.executor_resource,
        ),
    )


def local_sampler_config(config: ExperimentConfig, model: str) -> SamplerConfig:
    """The run's sampler settings for another local model (the fine-tuned target), ready to serve adapters."""
    return SamplerConfig(
        **{
            **config.sampling.to_dict(),
            "model": model,
            "model_kind": None,
            "backend": "auto",
            "api_base": None,
            "api_key_env": None,
            "enable_lora": True,
        }
    )


def target_sampler_config(config: ExperimentConfig) -> SamplerConfig | None:
    """The sampler of the fine-tuned target, when it is not the source (hybrid, or a different local target)."""
    if config.training is None or config.training.base_model == config.sampling.model:
        return None
    return local_sampler_config(config, config.training.base_model)


def check_capacity(config: ExperimentConfig, *, local: bool) -> None:
    """Refuse a plan whose actors and learner cannot all hold their CPUs at once on a cluster that cannot grow:
    the learner would wait for CPUs the samplers never release. On a cluster (which may autoscale) only warn."""
    import ray

    resources = config.resources
    samplers = [config.sampling] + ([target] if (target := target_sampler_config(config)) else [])
    needed = sum(resources.sampler_actors * _sampler_cpus(config, s) for s in samplers)
    executors = resources.num_executors or 1
    needed += executors * resources.executor_cpus
    if config.trains and config.training is not None and not config.training.use_gpu:
        needed += config.training.num_workers * config.training.cpus_per_worker
    available = ray.cluster_resources().get("CPU", 0.0)
    if needed <= available + 1e-9:
        return
    message = (
        f"the run needs {needed:g} CPUs at once (samplers, {executors} executor(s), learner workers) but the Ray "
        f"cluster has {available:g}: lower resources.sampler_cpus / resources.executor_cpus / "
        "training.cpus_per_worker, or give Ray more CPUs (resources.ray_num_cpus)"
    )
    if local:
        raise ValueError(message)
    logger.warning("%s; waiting for the autoscaler", message)


class MixedSampling:
    """A program source and the target's own sampler as one source: each problem's candidates are the source's
    programs followed by the target's samples, in one pool (``--source-model references+self``)."""

    def __init__(self, programs: SamplerPool, model: SamplerPool) -> None:
        self.programs = programs
        self.model = model
        self.config = programs.config  # the pipeline hands adapters to the program source's scorer by this

    def submit(self, problems: Any, params: Any) -> Any:
        parts = [self.programs.submit(problems, params), self.model.submit(problems, params)]
        return _merge_candidates().remote(*parts)

    def load_adapter(self, path: str, name: str) -> None:
        self.programs.load_adapter(path, name)  # the target pool gets it as the run's target


def _merge_candidates() -> Any:
    """A zero-CPU Ray task that concatenates per-problem candidate lists and renumbers ranks (defined on first use:
    importing this module must not touch Ray)."""
    global _MERGE
    if _MERGE is None:
        import ray

        @ray.remote(num_cpus=0)
        def merge(*parts: list[list[Any]]) -> list[list[Any]]:
            merged = [[c for part in per_problem for c in part] for per_problem in zip(*parts, strict=True)]
            return [[c.with_rank(rank) for rank, c in enumerate(cands)] for cands in merged]

        _MERGE = merge
    return _MERGE


_MERGE: Any = None


def start_services(config: ExperimentConfig, run: RunDirectory) -> Services:
    """Start every actor the run needs; the returned :class:`Services` closes them in reverse order."""
    closers: list[Any] = []
    try:
        executor = executor_pool(config)
        closers.append(executor.close)
        replay = create_replay_actor(config.replay, f"btp-replay-{run.path.name}", run.buffer_dir)
        closers.append(lambda: _kill(replay))
        source_pool = sampler_pool(config, config.sampling)
        closers.append(source_pool.close)
        source: Any = source_pool
        target = None
        target_sampling = target_sampler_config(config)
        if target_sampling is not None:
            target = sampler_pool(config, target_sampling)
            closers.append(target.close)
        spec = SourceSpec.parse(config.sampling.model)
        if spec is not None and spec.self_samples:
            if target is None:
                raise ValueError(f"sampling.model: {config.sampling.model!r} mixes in 'self' but there is no target")
            source = MixedSampling(source_pool, target)
    except BaseException:
        for closer in reversed(closers):
            closer()
        raise
    return Services(source=source, target=target, executor=executor, replay=replay, closers=closers)


def start_study_services(config: ExperimentConfig, model: str | None = None) -> Services:
    """The services of a study: the sampler of ``model`` (default: the run's target, or its source model) ready to
    serve adapters, the executors, and the source a study's candidate pool is built from — that sampler, or a program
    source (``references``, ``samples:PATH``, mixed with ``self``). No replay actor: arms fill their own buffers."""
    spec = SourceSpec.parse(config.sampling.model)
    if spec is not None and model is None:
        if config.training is None:
            raise ValueError(f"sampling.model: the program source {config.sampling.model!r} needs --target-model")
        model = config.training.base_model
    closers: list[Any] = []
    try:
        executor = executor_pool(config)
        closers.append(executor.close)
        sampling = config.sampling
        if model is not None and model != sampling.model:
            sampling = local_sampler_config(config, model)
        elif not sampling.model_spec().kind.is_api:
            sampling = dataclasses.replace(sampling, enable_lora=True)
        sampler = sampler_pool(config, sampling)
        closers.append(sampler.close)
        if spec is None:
            return Services(source=sampler, target=None, executor=executor, closers=closers)
        programs = sampler_pool(config, config.sampling)
        closers.append(programs.close)
        source = MixedSampling(programs, sampler) if spec.self_samples else programs
        return Services(source=source, target=sampler, executor=executor, closers=closers)
    except BaseException:
        for closer in reversed(closers):
            closer()
        raise


def _kill(actor: Any) -> None:
    import ray

    ray.kill(actor, no_restart=True)
