"""Tracking a BTP run: the tracker backends a config asks for, the resolved config as params, one iteration record
of ``metrics.json`` as metrics, and the run's outputs (report, plots, candidates, adapter) as artifacts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from btp_ray.tracking.base import Tracker, Tracking, flatten_metrics, flatten_params
from btp_ray.tracking.config import TrackingConfig

# Records of metrics.json that are not scalars per iteration: the learner's per-step list, the iteration number.
_NOT_METRICS = frozenset({"steps", "iteration", "histogram"})
# What the trackers and the learner's storage keep inside the run directory: never logged back as outputs.
_NOT_OUTPUTS = frozenset({"mlflow", "wandb", "tensorboard", "train"})
RESULT_FILES = ("report.md", "btp_results.json", "metrics.json", "config.yaml", "environment.json")


def make_backends(
    config: TrackingConfig,
    *,
    experiment: str,
    store_dir: Path,
    state_dir: Path | None = None,
    group: str | None = None,
    run_key: str = "",
) -> list[Tracker]:
    """The configured backends, writing local files under ``store_dir`` (imports happen later, on their thread).
    ``run_key`` names the run's own sub-directory for TensorBoard when several runs share ``store_dir``."""
    from btp_ray.tracking.mlflow_backend import MLflowTracker
    from btp_ray.tracking.tensorboard_backend import LOG_DIR as TB_DIR
    from btp_ray.tracking.tensorboard_backend import TensorBoardTracker
    from btp_ray.tracking.wandb_backend import WandbTracker

    backends: list[Tracker] = []
    for name in config.backends:
        if name == "mlflow":
            backends.append(
                MLflowTracker(
                    experiment=experiment,
                    run_dir=store_dir,
                    uri=config.uri,
                    state_dir=state_dir,
                    request_timeout_s=config.request_timeout_s,
                )
            )
        elif name == "tensorboard":
            backends.append(TensorBoardTracker(store_dir / TB_DIR / run_key if run_key else store_dir / TB_DIR))
        elif name == "wandb":
            backends.append(WandbTracker(project=experiment, directory=store_dir, mode=config.wandb_mode, group=group))
    return backends


def open_tracking(
    config: TrackingConfig,
    *,
    experiment: str,
    run_name: str,
    store_dir: Path,
    state_dir: Path | None = None,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    group: str | None = None,
    run_key: str = "",
) -> Tracking:
    """Start tracking one run (on a background thread) and log its params."""
    backends = make_backends(
        config, experiment=experiment, store_dir=store_dir, state_dir=state_dir, group=group, run_key=run_key
    )
    tracking = Tracking(backends, run_name=run_name, tags=tags, close_timeout_s=config.close_timeout_s)
    if params:
        tracking.log_params(params)
    return tracking


def track_btp_run(config: Any, run_dir: Path) -> Tracking:
    """Tracking for a BTP run in ``run_dir`` (an :class:`~btp_ray.experiment_config.ExperimentConfig`)."""
    from btp_ray.config_io import to_dict

    settings: TrackingConfig = config.tracking
    return open_tracking(
        settings,
        experiment=settings.experiment or config.name,
        run_name=Path(run_dir).name,
        store_dir=Path(run_dir),
        state_dir=Path(run_dir),
        params=flatten_params(to_dict(config)),
        tags={
            "btp.mode": config.mode.value,
            "btp.dataset": config.dataset,
            "btp.run_dir": str(Path(run_dir).resolve()),
        },
    )


def iteration_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """One iteration record of ``metrics.json`` as flat metrics: ``eval/greedy_pass_at_1``, ``eval/rsr``,
    ``sample/mean_pass_rate``, ``sample/p2value/mean``, ``buffer/size``, ``train/metrics/final_loss``,
    ``train/tokens_per_second``, ``phase_s/train``, …"""
    return flatten_metrics(record, skip=_NOT_METRICS)


def log_run_outputs(tracking: Tracking, run_dir: Path, settings: TrackingConfig, adapters: Sequence[Path] = ()) -> None:
    """The report, the result files, the plots, the candidate log and the last adapter, as artifacts."""
    run_dir = Path(run_dir)
    for name in RESULT_FILES:
        tracking.log_artifact(run_dir / name, "results")
    for plot in sorted(run_dir.rglob("*.png")):
        if plot.relative_to(run_dir).parts[0] not in _NOT_OUTPUTS:
            tracking.log_artifact(plot, "plots")
    if settings.log_candidates:
        tracking.log_artifact(run_dir / "candidates.jsonl", "results")
    trained = [a for a in adapters if (Path(a) / "adapter_config.json").is_file()]
    if settings.log_adapter and trained:
        tracking.log_artifact(trained[-1], "adapter")
