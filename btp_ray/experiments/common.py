"""What every study shares: starting Ray (optionally with the dashboard), the sampler and sandbox pools, the run
record (exact config, package versions, git commit, hardware, seeds, cost), sampling + testing a problem set into
per-problem outcomes, and the held-out evaluation of a (possibly adapted) model."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from btp_ray.config import to_dict
from btp_ray.data import Problem
from btp_ray.execution import ExecutionResult
from btp_ray.experiment_config import ExperimentConfig
from btp_ray.io import atomic_write_json
from btp_ray.metrics import CostRecord
from btp_ray.pipeline.evaluation import ProblemEval, greedy_params, summarize_evaluation
from btp_ray.pipeline.stream import StreamTimings, sample_and_test
from btp_ray.sampling import Candidate, GenerationParams

logger = logging.getLogger(__name__)

RUN_INFO = "run_info.json"


def init_ray_for(config: ExperimentConfig, address: str | None = None, *, dashboard: bool = False) -> str | None:
    """Join ``address`` / ``$RAY_ADDRESS``, or start a local Ray on loopback; ``dashboard`` starts the dashboard
    (on 127.0.0.1) so Tune trials can be watched there. Returns the dashboard's address when this call started it."""
    import ray

    from btp_ray.pipeline.services import init_ray

    if ray.is_initialized() or address or os.environ.get("RAY_ADDRESS") or not dashboard:
        init_ray(config, address)
        return None
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    context = ray.init(
        address="local",
        num_cpus=config.resources.ray_num_cpus or os.cpu_count(),
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        log_to_driver=config.debug,
    )
    return context.dashboard_url or None


@dataclass
class Pools:
    """A sampler pool (the model evaluated and fine-tuned), a sandbox pool, and the source a study's candidate pool is
    built from: the sampler itself, or a program source (``references``, ``samples:PATH``, mixed with ``self``);
    ``close`` stops them all."""

    sampler: Any
    executor: Any
    source: Any = None
    programs: Any = None  # the program source's own actor pool, when there is one

    def __post_init__(self) -> None:
        if self.source is None:
            self.source = self.sampler

    def close(self) -> None:
        closers = [self.sampler.close, self.executor.close]
        if self.programs is not None:
            closers.insert(0, self.programs.close)
        for closer in closers:
            try:
                closer()
            except Exception as exc:  # best effort: results are already on disk
                logger.warning("closing %s: %s", closer, exc)

    def __enter__(self) -> Pools:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_pools(config: ExperimentConfig, model: str | None = None) -> Pools:
    """Start the sampler actors (for ``model``, default the config's source) and the executors (needs Ray)."""
    from btp_ray.pipeline.services import MixedSampling, executor_pool, local_sampler_config, sampler_pool
    from btp_ray.sources.spec import SourceSpec

    spec = SourceSpec.parse(config.sampling.model)
    if spec is not None and model is None:
        if config.training is None:
            raise ValueError(f"sampling.model: the program source {config.sampling.model!r} needs --target-model")
        model = config.training.base_model
    executor = executor_pool(config)
    started: list[Any] = []
    try:
        sampling = config.sampling
        if model is not None and model != sampling.model:
            sampling = local_sampler_config(config, model)
        elif not sampling.model_spec().kind.is_api:
            sampling = dataclasses.replace(sampling, enable_lora=True)
        sampler = sampler_pool(config, sampling)
        started.append(sampler)
        if spec is None:
            return Pools(sampler=sampler, executor=executor)
        programs = sampler_pool(config, config.sampling)
        started.append(programs)
        source = MixedSampling(programs, sampler) if spec.self_samples else programs
        return Pools(sampler=sampler, executor=executor, source=source, programs=programs)
    except BaseException:
        for pool in started:
            pool.close()
        executor.close()
        raise


def run_record(config: Any, seeds: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a rerun needs: the exact config, the seeds, package versions, git commit, hardware, command line."""
    from btp_ray.pipeline.run_dir import environment_record

    return {"config": to_dict(config), "seeds": seeds, "environment": environment_record(), **(extra or {})}


def write_json(path: Path, data: Any) -> Path:
    atomic_write_json(path, data)
    return path


Outcomes = dict[str, list[tuple[Candidate, ExecutionResult]]]


@dataclass
class Collected:
    """Every problem's tested candidates (in the problems' order, candidates by rank), with the stream's timings."""

    outcomes: Outcomes
    timings: StreamTimings = field(default_factory=StreamTimings)

    @property
    def tokens_generated(self) -> int:
        return sum(c.num_tokens for pairs in self.outcomes.values() for c, _ in pairs)


def collect(
    sampler: Any, executor: Any, problems: Sequence[Problem], params: GenerationParams, *, batch_size: int
) -> Collected:
    """Sample ``params.num_candidates`` candidates per problem and test each one in the sandbox pool."""
    timings = StreamTimings()
    found: Outcomes = {}
    for batch in sample_and_test(sampler, executor, problems, params, batch_size=batch_size, timings=timings):
        for problem, candidates, results in zip(batch.problems, batch.candidates, batch.results, strict=True):
            pairs = sorted(zip(candidates, results, strict=True), key=lambda pair: pair[0].rank)
            found[problem.task_id] = pairs
    return Collected(outcomes={p.task_id: found[p.task_id] for p in problems}, timings=timings)


def collected_cost(collected: Collected, cost: CostRecord | None = None) -> CostRecord:
    cost = cost or CostRecord()
    cost.add_phase("sample", collected.timings.sample_busy_s)
    cost.add_phase("execute", collected.timings.execute_busy_s)
    cost.add_tokens(tokens_out=collected.tokens_generated)
    return cost


def evaluate_greedy(
    sampler: Any,
    executor: Any,
    problems: Sequence[Problem],
    config: ExperimentConfig,
    *,
    baseline_accuracy: float | None = None,
) -> tuple[dict[str, Any], Collected]:
    """Greedy pass@1, mean pass rate and RSR of whatever the sampler currently serves, on ``problems``."""
    params = greedy_params(config.generation, config.eval_max_new_tokens)
    started = time.perf_counter()
    collected = collect(sampler, executor, problems, params, batch_size=config.problem_batch_size)
    evals = [ProblemEval(problem=p, greedy=collected.outcomes[p.task_id][0]) for p in problems]
    summary = summarize_evaluation(evals, baseline_accuracy)
    summary["wall_s"] = time.perf_counter() - started
    return summary, collected
