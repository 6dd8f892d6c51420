"""Step 4, the hyperparameter study on Ray Tune: every configuration is a Tune trial (visible in the Ray dashboard)
over α, β, the replay sampling method, num_beams, the learning rate, LoRA r/alpha and the replay batch size.
A grid or random study is a Tune search space (``tune.grid_search``, ``tune.uniform``/``loguniform``/``choice``)
whose variants Tune's variant generator resolves with the study's seed, so the trial list is known (and bounded by
``max_configs``) before the first trial starts.

Trials share one candidate pool sampled and tested once by the driver; only a trial whose ``num_beams`` differs from
the pool's re-samples (beam search with its own k, tested in its own sandbox). Each trial draws its batch from a
replay buffer with its α/β/method, fine-tunes with the one-process ``Learner`` (reporting the loss every step, which
ASHA early stopping prunes on when enabled: the loss is comparable across trials that draw the same kind of batch,
not a substitute for the held-out metric), then evaluates greedily on the held-out problems. A trial that raises is
recorded as an error; the study goes on.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from btp_ray.data.types import Problem
from btp_ray.experiment_config import ExperimentConfig
from btp_ray.experiments.common import RUN_INFO, run_record, write_json
from btp_ray.experiments.pool import CandidatePool, pool_of
from btp_ray.pipeline.records import HELD_OUT, STUDY_POOL, TestedCandidate
from btp_ray.replay import ReplayBuffer, Strategy
from btp_ray.tracking.studies import study_tracking, tune_callbacks

logger = logging.getLogger(__name__)

RESULTS_FILE = "hyperparameter_study_results.json"

KNOBS = ("alpha", "beta", "sampling_method", "num_beams", "learning_rate", "lora_r", "lora_alpha", "batch_size")
# Values a focused study varies one at a time around the run's config, and a grid study crosses.
FOCUSED_VALUES: dict[str, tuple[Any, ...]] = {
    "alpha": (0.0, 0.25, 0.5, 0.75, 1.0),
    "beta": (0.5, 1.0, 2.0),
    "sampling_method": ("power", "rank"),
    "learning_rate": (5e-5, 2e-4, 1e-3),
    "lora_r": (8, 16, 32),
}
GRID_VALUES: dict[str, tuple[Any, ...]] = {
    "alpha": (0.25, 0.5, 0.75),
    "beta": (0.5, 1.0, 2.0),
    "sampling_method": ("power", "rank"),
    "learning_rate": (1e-4, 5e-4),
}
# Random search draws the knobs it names from Tune's distributions (see ``random_space``).
RANDOM_KNOBS = ("alpha", "beta", "sampling_method", "learning_rate", "lora_r")
# ASHA halves the trials at each rung; with fewer trials than this it would prune most of a tiny study.
MIN_TRIALS_FOR_ASHA = 4
OBJECTIVE = ("eval_pass_at_1", "eval_mean_pass_rate")  # maximised, in this order; then the lower final loss


class SearchType(str, enum.Enum):
    FOCUSED = "focused"  # one knob at a time around the run's config
    GRID = "grid"  # Tune's grid over GRID_VALUES (a seeded subset when larger than max_configs)
    RANDOM = "random"  # seeded draws from Tune's distributions (random_space)


class TrialStatus(str, enum.Enum):
    COMPLETED = "completed"
    STOPPED = "stopped_early"  # pruned by ASHA before its evaluation
    ERROR = "error"


@dataclass(frozen=True)
class HyperparamSettings:
    """The study's search. ``values`` replaces the focused/grid values of the knobs it names (e.g. from YAML), and
    a focused study varies those knobs first. ``early_stopping`` prunes trials on the training loss with ASHA
    (halving at each rung, from ``grace_period`` reported steps on) when the study has at least
    ``MIN_TRIALS_FOR_ASHA`` trials."""

    search_type: SearchType = SearchType.FOCUSED
    max_configs: int = 15
    seed: int = 0
    early_stopping: bool = True
    grace_period: int = 2
    cpus_per_trial: float = 1.0
    max_concurrent_trials: int | None = None
    values: Mapping[str, tuple[Any, ...]] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "search_type", SearchType(self.search_type))
        if self.max_configs < 1:
            raise ValueError(f"max_configs must be >= 1, got {self.max_configs}")
        if self.grace_period < 1:
            raise ValueError(f"grace_period must be >= 1 (reported steps), got {self.grace_period}")
        if not self.cpus_per_trial > 0:
            raise ValueError(f"cpus_per_trial must be > 0, got {self.cpus_per_trial}")
        if self.max_concurrent_trials is not None and self.max_concurrent_trials < 1:
            raise ValueError(f"max_concurrent_trials must be >= 1 or None, got {self.max_concurrent_trials}")
        unknown = set(self.values) - set(KNOBS)
        if unknown:
            raise ValueError(f"values: unknown knobs {sorted(unknown)}; choose among {', '.join(KNOBS)}")
        object.__setattr__(self, "values", {k: tuple(v) for k, v in self.values.items()})
        if any(not v for v in self.values.values()):
            raise ValueError("values: every knob named needs at least one value")


def default_knobs(config: ExperimentConfig) -> dict[str, Any]:
    """The run's own values of every knob (what a focused study varies around)."""
    assert config.training is not None  # the study fine-tunes: checked by the caller
    strategy = config.replay.strategy.value
    return {
        "alpha": config.replay.alpha,
        "beta": config.replay.beta,
        "sampling_method": strategy if strategy in ("power", "rank") else "power",
        "num_beams": config.generation.num_candidates,
        "learning_rate": config.training.learning_rate,
        "lora_r": config.training.lora_r,
        "lora_alpha": config.training.lora_alpha,
        "batch_size": config.batch_size,
    }


def random_space() -> dict[str, Any]:
    """The random search's distributions, as Tune's own search-space objects."""
    from ray import tune

    return {
        "alpha": tune.uniform(0.0, 1.0),
        "beta": tune.loguniform(0.25, 4.0),
        "sampling_method": tune.choice(["power", "rank"]),
        "learning_rate": tune.loguniform(3e-5, 2e-3),
        "lora_r": tune.choice([8, 16, 32]),
    }


def search_space(settings: HyperparamSettings, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The grid or random study's Tune search space: the knobs searched over Tune's ``grid_search`` or its
    distributions (``settings.values`` becomes a grid / a ``choice``), every other knob at the run's value."""
    from ray import tune

    if settings.search_type is SearchType.GRID:
        values = {**GRID_VALUES, **settings.values}
        return {**defaults, **{knob: tune.grid_search(list(v)) for knob, v in values.items()}}
    if settings.search_type is SearchType.RANDOM:
        chosen = {knob: tune.choice(list(v)) for knob, v in settings.values.items()}
        return {**defaults, **random_space(), **chosen}
    raise ValueError(f"a {settings.search_type.value} study is a list of configurations, not a search space")


def trial_configs(settings: HyperparamSettings, defaults: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The trials' knob settings, at most ``max_configs``, deterministic for a given seed: a focused study's list,
    or variants of :func:`search_space` resolved by Tune's variant generator with the study's seed."""
    from ray.tune.search.variant_generator import generate_variants

    rng = np.random.default_rng(settings.seed)
    configs: list[dict[str, Any]] = []
    if settings.search_type is SearchType.FOCUSED:
        values = {**settings.values, **{k: v for k, v in FOCUSED_VALUES.items() if k not in settings.values}}
        configs.append(dict(defaults))
        for knob, options in values.items():
            configs.extend({**defaults, knob: v} for v in options if v != defaults[knob])
    elif settings.search_type is SearchType.GRID:
        configs = [variant for _, variant in generate_variants(search_space(settings, defaults))]
        if len(configs) > settings.max_configs:
            keep = sorted(rng.choice(len(configs), size=settings.max_configs, replace=False).tolist())
            configs = [configs[i] for i in keep]
    else:
        space = search_space(settings, defaults)
        # A space of few choices repeats itself: draw (a bounded number of times) until max_configs distinct ones.
        for _ in range(20 * settings.max_configs):
            _, variant = next(generate_variants(space, random_state=rng))
            if variant not in configs:
                configs.append(variant)
            if len(configs) == settings.max_configs:
                break
    unique: list[dict[str, Any]] = []
    for config in configs:
        if config not in unique:
            unique.append(config)
    return [{"index": i, **c} for i, c in enumerate(unique[: settings.max_configs])]


@dataclass(frozen=True)
class TrialContext:
    """What every trial shares (shipped once through the object store by ``tune.with_parameters``)."""

    config: ExperimentConfig
    pool: CandidatePool
    train_problems: tuple[Problem, ...]
    eval_problems: tuple[Problem, ...]
    output_dir: str
    seed: int


class TrialRunner:
    """One trial's work, Ray-free apart from the ``report`` callback: (re-sample if k differs) → draw → fine-tune
    (loss reported per step) → evaluate. Heavy parts (model, sandbox) are built on first use and closed by
    ``close``."""

    def __init__(self, context: TrialContext, knobs: Mapping[str, Any], report: Any) -> None:
        self.context = context
        self.knobs = dict(knobs)
        self.report = report
        self._sampler: Any = None
        self._sandbox: Any = None

    def run(self) -> dict[str, Any]:
        config = self.context.config
        assert config.training is not None
        started = time.perf_counter()
        pool = self._pool()
        replay = dataclasses.replace(
            config.replay,
            strategy=Strategy(self.knobs["sampling_method"]),
            alpha=float(self.knobs["alpha"]),
            beta=float(self.knobs["beta"]),
            seed=self.context.seed,
            epsilon=max(config.replay.epsilon, 1e-6),
        )
        training = dataclasses.replace(
            config.training,
            learning_rate=float(self.knobs["learning_rate"]),
            lora_r=int(self.knobs["lora_r"]),
            lora_alpha=int(self.knobs["lora_alpha"]),
            seed=self.context.seed,
        )
        buffer = ReplayBuffer(replay)
        buffer.add(pool.experiences())
        _, drawn = buffer.sample(int(self.knobs["batch_size"]), True)
        from btp_ray.experiments.training import LocalTrainer

        adapter_dir = Path(self.context.output_dir) / "trials" / f"trial_{self.knobs['index']:03d}"
        result = LocalTrainer(training).train(
            drawn,
            seed=self.context.seed,
            output_dir=adapter_dir,
            on_step=lambda m: self.report({"train_loss": m.loss, "step": m.step}),
        )
        metrics: dict[str, Any] = {
            "train_loss": result.final_loss,
            "first_loss": result.first_loss,
            "batch_mean_pass_rate": sum(e.pass_rate or 0.0 for e in drawn) / len(drawn),
            "batch_distinct": len({(e.problem_id, e.code) for e in drawn}),
            "pool_digest": pool.digest,
            "train_s": result.wall_s,
        }
        if self.context.eval_problems:
            self._serve(str(adapter_dir), f"trial-{self.knobs['index']}")
            summary = self._evaluate(self.context.eval_problems)
            metrics["eval_pass_at_1"] = summary["greedy_pass_at_1"]
            metrics["eval_mean_pass_rate"] = summary["greedy_mean_pass_rate"]
        metrics["wall_s"] = time.perf_counter() - started
        metrics["evaluated"] = True  # not Tune's own "done", which a pruned trial gets too
        self.report(metrics)
        return metrics

    def _pool(self) -> CandidatePool:
        """The shared pool, or a fresh one when this trial's beam width differs from it."""
        pool = self.context.pool
        if int(self.knobs["num_beams"]) == int(pool.generation["num_candidates"]):
            return pool
        params = dataclasses.replace(self.context.config.generation, num_candidates=int(self.knobs["num_beams"]))
        problems = list(self.context.train_problems)
        return pool_of(problems, self._sample_and_test(problems, params, phase=STUDY_POOL), params.to_dict())

    def _sample_and_test(
        self, problems: Sequence[Problem], params: Any, **where: Any
    ) -> dict[str, list[TestedCandidate]]:
        """The pipeline's sample-and-test step inside this trial's process: its own sampler and sandbox."""
        from btp_ray.execution import Sandbox
        from btp_ray.pipeline.steps import collect_in_process
        from btp_ray.sampling import build_sampler

        if self._sampler is None:
            self._sampler = build_sampler(self.context.config.sampling)
        if self._sandbox is None:
            self._sandbox = Sandbox(self.context.config.execution)
        return collect_in_process(self._sampler, self._sandbox, problems, params, **where)

    def _serve(self, path: str, name: str) -> None:
        from btp_ray.sampling import build_sampler

        if self._sampler is None:
            self._sampler = build_sampler(self.context.config.sampling)
        self._sampler.load_adapter(path, name)

    def _evaluate(self, problems: Sequence[Problem]) -> dict[str, Any]:
        from btp_ray.pipeline.evaluation import greedy_params, summarize_evaluation
        from btp_ray.pipeline.steps import evaluation_of

        config = self.context.config
        params = greedy_params(config.generation, config.eval_max_new_tokens)
        outcomes = self._sample_and_test(problems, params, phase=HELD_OUT, kind="greedy")
        return summarize_evaluation([evaluation_of(p, outcomes[p.task_id]) for p in problems], None)

    def close(self) -> None:
        if self._sandbox is not None:
            self._sandbox.close()
        if self._sampler is not None:
            self._sampler.close()


def tune_trainable(trial: dict[str, Any], context: TrialContext) -> None:
    """The Tune function trainable: one configuration, metrics reported through ``ray.tune.report``."""
    from ray import tune

    runner = TrialRunner(context, trial["knobs"], tune.report)
    try:
        runner.run()
    finally:
        runner.close()


def trial_row(knobs: Mapping[str, Any], metrics: Mapping[str, Any] | None, error: BaseException | None) -> dict:
    """One row of the results table."""
    metrics = dict(metrics or {})
    if error is not None:
        status = TrialStatus.ERROR
    elif metrics.get("evaluated"):
        status = TrialStatus.COMPLETED
    else:
        status = TrialStatus.STOPPED
    keep = ("train_loss", "first_loss", "eval_pass_at_1", "eval_mean_pass_rate", "batch_mean_pass_rate",
            "batch_distinct", "pool_digest", "wall_s", "training_iteration")  # fmt: skip
    return {
        "index": knobs["index"],
        "knobs": {k: knobs[k] for k in KNOBS},
        "status": status.value,
        "metrics": {k: metrics[k] for k in keep if k in metrics},
        "error": _error_line(error) if error is not None else None,
    }


def _error_line(error: BaseException) -> str:
    """The trial's own exception (Ray wraps it in a RayTaskError), on one line."""
    cause = getattr(error, "cause", None) or error
    text = f"{type(cause).__name__}: {cause}"
    return re.sub(r"\x1b\[[0-9;]*m", "", text).strip().splitlines()[-1][:500]


def best_row(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The completed trial with the highest held-out pass@1, then mean pass rate, then the lowest final loss."""
    done = [r for r in rows if r["status"] == TrialStatus.COMPLETED.value]
    if not done:
        return None
    return max(
        done,
        key=lambda r: (
            *(r["metrics"].get(m) if r["metrics"].get(m) is not None else -1.0 for m in OBJECTIVE),
            -r["metrics"].get("train_loss", math.inf),
            -r["index"],
        ),
    )


def sensitivity(rows: Sequence[Mapping[str, Any]], defaults: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """For each knob that took more than one value among completed trials: the mean metrics per value, over the
    trials that differ from the run's defaults in that knob only (or in none), so each curve isolates its knob."""
    done = [r for r in rows if r["status"] == TrialStatus.COMPLETED.value]
    out: dict[str, list[dict[str, Any]]] = {}
    for knob in KNOBS:
        isolating = [r for r in done if all(r["knobs"][k] == defaults[k] for k in KNOBS if k != knob)]
        pool = isolating if len({r["knobs"][knob] for r in isolating}) > 1 else done
        values = sorted({r["knobs"][knob] for r in pool}, key=lambda v: (isinstance(v, str), v))
        if len(values) < 2:
            continue
        points = []
        for value in values:
            group = [r for r in pool if r["knobs"][knob] == value]
            point: dict[str, Any] = {"value": value, "trials": len(group)}
            for metric in ("eval_pass_at_1", "eval_mean_pass_rate", "train_loss"):
                found = [r["metrics"][metric] for r in group if r["metrics"].get(metric) is not None]
                point[metric] = sum(found) / len(found) if found else None
            points.append(point)
        out[knob] = points
    return out


def run_hyperparam_study(
    config: ExperimentConfig,
    settings: HyperparamSettings,
    *,
    pool: CandidatePool,
    train_problems: Sequence[Problem],
    eval_problems: Sequence[Problem],
    output_dir: Path,
) -> dict[str, Any]:
    """Run every configuration as a Ray Tune trial (needs Ray) and write the results table, best config and
    sensitivity data."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    if config.training is None:
        raise ValueError("the hyperparameter study fine-tunes: the config needs a training section (a local target)")
    output_dir = output_dir.resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    defaults = default_knobs(config)
    configs = trial_configs(settings, defaults)
    seeds = {"sampling": config.seed, "study": settings.seed}
    write_json(output_dir / RUN_INFO, run_record(config, seeds, {"hyperparam": settings_dict(settings)}))
    context = TrialContext(
        config=config,
        pool=pool,
        train_problems=tuple(train_problems),
        eval_problems=tuple(eval_problems),
        output_dir=str(output_dir),
        seed=settings.seed,
    )
    scheduler = None
    if settings.early_stopping and len(configs) >= MIN_TRIALS_FOR_ASHA:
        steps = config.training.max_steps or 100
        scheduler = ASHAScheduler(
            metric="train_loss",
            mode="min",
            max_t=steps + 1,
            grace_period=min(settings.grace_period, steps + 1),
            reduction_factor=2,
        )
    tracking = study_tracking(config.tracking, output_dir)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(tune_trainable, context=context), {"cpu": settings.cpus_per_trial}),
        param_space={"knobs": tune.grid_search(configs)},
        tune_config=tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=settings.max_concurrent_trials),
        run_config=tune.RunConfig(
            name="hyperparameter_study",
            storage_path=str(output_dir / "tune"),
            failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
            callbacks=tune_callbacks(tracking, output_dir, "hyperparam"),  # one tracked run per trial
            verbose=0,
        ),
    )
    started = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - started
    rows = sorted(
        (trial_row(result.config["knobs"], result.metrics, result.error) for result in grid),
        key=lambda r: r["index"],
    )
    best = best_row(rows)
    results = {
        "experiment": "hyperparameter_study",
        "model": config.sampling.model,
        "dataset": config.dataset,
        "settings": settings_dict(settings),
        "seeds": seeds,
        "defaults": defaults,
        "pool": pool.summary(),
        "trials": rows,
        "num_trials": len(rows),
        "num_errors": sum(1 for r in rows if r["status"] == TrialStatus.ERROR.value),
        "num_stopped_early": sum(1 for r in rows if r["status"] == TrialStatus.STOPPED.value),
        "best": best,
        "objective": list(OBJECTIVE),
        "sensitivity": sensitivity(rows, defaults),
        "tune_path": str(output_dir / "tune" / "hyperparameter_study"),
        "wall_s": wall,
        "cost": {"phase_seconds": {"tune": wall}, "wall_seconds": wall},
    }
    write_json(output_dir / RESULTS_FILE, results)
    return results


def settings_dict(settings: HyperparamSettings) -> dict[str, Any]:
    return {
        "search_type": settings.search_type.value,
        "max_configs": settings.max_configs,
        "seed": settings.seed,
        "early_stopping": settings.early_stopping,
        "grace_period": settings.grace_period,
        "cpus_per_trial": settings.cpus_per_trial,
        "values": {k: list(v) for k, v in settings.values.items()},
    }
