"""The big-to-small run: a source (an API model, a big local one, or existing programs: a samples file from a big
model's run elsewhere, the training problems' references) provides candidates; a small local target is
fine-tuned on them through the BTP pipeline; the target is evaluated on the held-out problems before and after, with
RSR (the share of its remaining failures fixed) against its own before-score.

The BTP step (step 2) runs through :func:`run_btp_pipeline` too: the pipeline's own loop, run directory and report,
inside the suite's directory and the suite's Ray session.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from btp_ray.experiment_config import ExperimentConfig, Mode
from btp_ray.experiments.common import RUN_INFO, run_record, write_json
from btp_ray.models import ModelKind

logger = logging.getLogger(__name__)

RESULTS_FILE = "big_to_small_results.json"


class BigToSmallError(ValueError):
    """The config cannot describe a big-to-small run (no local target to fine-tune)."""


def run_btp_pipeline(config: ExperimentConfig, output_dir: Path) -> dict[str, Any]:
    """Run the BTP pipeline into ``output_dir`` in the current Ray session; returns ``btp_results.json``'s content."""
    from btp_ray.pipeline.run_dir import RunDirectory
    from btp_ray.pipeline.runner import BTPPipeline
    from btp_ray.pipeline.services import start_services

    run = RunDirectory.create(output_dir, config)
    pipeline = BTPPipeline(config, run)
    services = start_services(config, run)
    try:
        return pipeline.execute(services)
    finally:
        services.close()


def big_to_small_config(config: ExperimentConfig, target_model: str | None = None) -> ExperimentConfig:
    """The run's config as a big-to-small run: hybrid mode for an API source, finetune for a local one, the target
    fine-tuned. With two local models on one machine, each sampler pool claims half the usual CPU share so that
    both pools, the executors and the learner fit the cluster together."""
    target = target_model or (config.training.base_model if config.training else None)
    if target is None:
        raise BigToSmallError("big-to-small needs a local target model to fine-tune: pass --target-model")
    if config.training is None:
        raise BigToSmallError("big-to-small needs the training section of the config (the target's fine-tuning)")
    # An API model or existing programs (samples file, references) sample through hybrid mode; a local model through
    # finetune mode.
    local_source = config.sampling.model_spec().kind is ModelKind.LOCAL
    mode = Mode.FINETUNE if local_source else Mode.HYBRID
    resources = config.resources
    if target != config.sampling.model:
        resources = dataclasses.replace(resources, sampler_cpus=resources.sampler_cpus / 2)
    return dataclasses.replace(
        config,
        name=f"{config.name}-big-to-small",
        mode=mode,
        n_iterations=max(1, config.n_iterations),
        training=dataclasses.replace(config.training, base_model=target),
        sampling=config.sampling if local_source else dataclasses.replace(config.sampling, scorer_model=target),
        resources=resources,
    )


def summarize_big_to_small(results: dict[str, Any]) -> dict[str, Any]:
    """Before/after of the target on the held-out problems, from the pipeline's results."""
    before, after = results.get("baseline"), results.get("final")
    summary: dict[str, Any] = {
        "source_model": results["source_model"],
        "target_model": results["target_model"],
        "self_improvement": results["source_model"] == results["target_model"],
        "eval_problems": len(results["eval_problems"]),
        "before": None,
        "after": None,
        "rsr": None,
    }
    for key, ev in (("before", before), ("after", after)):
        if ev:
            summary[key] = {
                "greedy_pass_at_1": ev["greedy_pass_at_1"],
                "mean_pass_rate": ev["mean_pass_rate"],
                "greedy_mean_pass_rate": ev.get("greedy_mean_pass_rate"),
                "solved": ev["solved"],
            }
    if after is not None:
        summary["rsr"] = after.get("rsr")
    return summary


def run_big_to_small(config: ExperimentConfig, output_dir: Path, target_model: str | None = None) -> dict[str, Any]:
    """Run the pipeline into ``output_dir/btp_run`` and write the before/after summary to ``output_dir``."""
    config = big_to_small_config(config, target_model)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(output_dir / RUN_INFO, run_record(config, {"run": config.seed}))
    results = run_btp_pipeline(config, output_dir / "btp_run")
    summary = {
        "experiment": "big_to_small",
        **summarize_big_to_small(results),
        "mode": config.mode.value,
        "cost": results["cost"],
        "run_dir": "btp_run",
        "iterations": results["iterations"],
    }
    write_json(output_dir / RESULTS_FILE, summary)
    return summary
