"""The main runner: the steps of the paper's suite (baseline, BTP, ablation, hyperparameters, big-to-small) into one
directory with the original suite's layout, then one report::

    <dir>/step1_baseline/baseline_experiment_results.json
    <dir>/step2_btp/btp_results.json            (the BTP pipeline's own run directory)
    <dir>/step3_ablation/ablation_results.json
    <dir>/step4_hyperparameter/hyperparameter_study_results.json
    <dir>/step5_big_to_small/big_to_small_results.json
    <dir>/suite_results.json                    (every step's results: what the report is rendered from)
    <dir>/experiment_report.md, experiment_report.txt, plots/*.png

A step that fails is recorded with its error and the suite goes on; the ablation's candidate pool is reused by the
hyperparameter study (sampled and tested once for both).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from btp_ray.experiment_config import ExperimentConfig
from btp_ray.experiments.ablation import AblationSettings, AblationStudy
from btp_ray.experiments.baseline import BaselineSettings, run_baseline
from btp_ray.experiments.common import run_record, write_json
from btp_ray.experiments.hyperparam import HyperparamSettings, run_hyperparam_study
from btp_ray.experiments.pool import CandidatePool, build_pool
from btp_ray.experiments.report import write_report
from btp_ray.pipeline.runner import load_split
from btp_ray.pipeline.services import Services, start_study_services
from btp_ray.tracking.studies import study_tracking

logger = logging.getLogger(__name__)

SUITE_RESULTS = "suite_results.json"


class Step(str, enum.Enum):
    BASELINE = "baseline"
    BTP = "btp"
    ABLATION = "ablation"
    HYPERPARAM = "hyperparam"
    BIG_TO_SMALL = "big_to_small"


STEP_DIRS = {
    Step.BASELINE: "step1_baseline",
    Step.BTP: "step2_btp",
    Step.ABLATION: "step3_ablation",
    Step.HYPERPARAM: "step4_hyperparameter",
    Step.BIG_TO_SMALL: "step5_big_to_small",
}
EXPERIMENTS = ("all", "baseline", "btp", "btp_finetune", "ablation", "hyperparam", "big_to_small")


def steps_for(experiment: str) -> tuple[Step, ...]:
    """The steps ``--experiment`` names (``btp_finetune`` is the original suite's name for the BTP fine-tuning step)."""
    if experiment == "all":
        return tuple(Step)
    if experiment == "btp_finetune":
        return (Step.BTP,)
    if experiment not in EXPERIMENTS:
        raise ValueError(f"experiment must be one of {', '.join(EXPERIMENTS)}; got {experiment!r}")
    return (Step(experiment),)


@dataclass(frozen=True)
class SuiteSettings:
    """Which steps, under which preset name (for the record), and each study's own settings."""

    steps: tuple[Step, ...] = tuple(Step)
    preset: str | None = None
    baseline: BaselineSettings = field(default_factory=BaselineSettings)
    ablation: AblationSettings = field(default_factory=AblationSettings)
    hyperparam: HyperparamSettings = field(default_factory=HyperparamSettings)
    target_model: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(Step(s) for s in self.steps))
        if not self.steps:
            raise ValueError("steps: run at least one step")


class Suite:
    """Runs the chosen steps in order (the Ray session must be up) and writes the report."""

    def __init__(self, config: ExperimentConfig, settings: SuiteSettings, output_dir: Path) -> None:
        self.root = output_dir.resolve()
        # One tracking store and experiment for every step: arms, trials and BTP runs compare side by side.
        self.config = dataclasses.replace(config, tracking=study_tracking(config.tracking, self.root))
        self.settings = settings
        self.steps: dict[str, dict[str, Any]] = {}
        self._pool: CandidatePool | None = None

    def run(self) -> dict[str, Any]:
        self.root.mkdir(parents=True, exist_ok=True)
        train, evaluation = load_split(self.config)
        needs_pools = {Step.BASELINE, Step.ABLATION, Step.HYPERPARAM} & set(self.settings.steps)
        if needs_pools:
            with start_study_services(self.config) as services:
                if Step.BASELINE in self.settings.steps:
                    self._step(Step.BASELINE, lambda d: run_baseline(
                        self.config, self.settings.baseline, services, [*train, *evaluation], d))  # fmt: skip
                if Step.ABLATION in self.settings.steps:
                    self._step(Step.ABLATION, lambda d: self._ablation(services, train, evaluation, d))
                if Step.HYPERPARAM in self.settings.steps and self._pool is None:
                    self._pool, _ = build_pool(services.source, services.executor, train, self.config.generation,
                                               batch_size=self.config.problem_batch_size)  # fmt: skip
        if Step.HYPERPARAM in self.settings.steps:
            self._step(Step.HYPERPARAM, lambda d: self._hyperparam(train, evaluation, d))
        if Step.BTP in self.settings.steps:
            from btp_ray.experiments.big_to_small import run_btp_pipeline

            self._step(Step.BTP, lambda d: run_btp_pipeline(self.config, d))
        if Step.BIG_TO_SMALL in self.settings.steps:
            from btp_ray.experiments.big_to_small import run_big_to_small

            self._step(Step.BIG_TO_SMALL, lambda d: run_big_to_small(self.config, d, self.settings.target_model))
        suite = {
            "name": self.root.name,
            "preset": self.settings.preset,
            "dataset": self.config.dataset,
            "model": self.config.sampling.model,
            "steps": self.steps,
            "run": run_record(self.config, self._seeds(), {"settings": settings_dict(self.settings)}),
        }
        write_json(self.root / SUITE_RESULTS, suite)
        write_report(suite, self.root)
        return suite

    def _seeds(self) -> dict[str, Any]:
        return {
            "run": self.config.seed,
            "ablation": list(self.settings.ablation.seeds),
            "hyperparam": self.settings.hyperparam.seed,
        }

    def _step(self, step: Step, body: Any) -> None:
        directory = self.root / STEP_DIRS[step]
        started = time.perf_counter()
        logger.info("suite: step %s into %s", step.value, directory)
        record: dict[str, Any] = {"dir": STEP_DIRS[step]}
        try:
            record["results"] = body(directory)
            record["status"] = "ok"
        except Exception as exc:  # a failed step is reported; the others still run
            logger.exception("suite: step %s failed", step.value)
            record.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:1000])
        record["wall_s"] = time.perf_counter() - started
        self.steps[step.value] = record
        write_json(self.root / (SUITE_RESULTS + ".partial"), {"steps": self.steps})

    def _ablation(self, services: Services, train: Sequence[Any], evaluation: Sequence[Any], directory: Path) -> dict:
        from btp_ray.experiments.training import make_trainer

        if self.config.training is None:
            raise ValueError("the ablation fine-tunes: the config needs a local target (training section)")
        study = AblationStudy(
            self.config,
            self.settings.ablation,
            services=services,
            trainer=make_trainer(self.settings.ablation.trainer, self.config.training),
            train_problems=train,
            eval_problems=evaluation,
            output_dir=directory,
        )
        self._pool = study.build_pool() if self._pool is None else self._pool
        return study.run(self._pool)

    def _hyperparam(self, train: Sequence[Any], evaluation: Sequence[Any], directory: Path) -> dict:
        if self._pool is None:
            raise RuntimeError("no candidate pool: sampling for the study failed earlier")
        return run_hyperparam_study(
            self.config,
            self.settings.hyperparam,
            pool=self._pool,
            train_problems=train,
            eval_problems=evaluation,
            output_dir=directory,
        )


def settings_dict(settings: SuiteSettings) -> dict[str, Any]:
    from btp_ray.experiments.ablation import settings_dict as ablation_dict
    from btp_ray.experiments.hyperparam import settings_dict as hyperparam_dict

    return {
        "steps": [s.value for s in settings.steps],
        "preset": settings.preset,
        "baseline": {"num_samples": settings.baseline.num_samples},
        "ablation": ablation_dict(settings.ablation),
        "hyperparam": hyperparam_dict(settings.hyperparam),
        "target_model": settings.target_model,
    }
