"""The BTP pipeline: the loop (:mod:`.runner`), its pipelined sample → test stream (:mod:`.stream`), held-out
evaluation, the run directory, progress and the report. :func:`run_from_args` is what ``jobs/btp.py`` and
``btp run`` call."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

from btp_ray.experiment_config import ExperimentConfig

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def configure_logging(debug: bool, log_file: Path | None) -> None:
    """Driver-side logging: INFO (DEBUG with --debug) to stderr and to the run's log file."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    for noisy in ("filelock", "urllib3", "httpx", "ray.train", "ray.tune"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_from_args(args: argparse.Namespace, config: ExperimentConfig) -> int:
    """Create (or resume) the run directory, start Ray and the actors, run BTP, print where the results are."""
    from btp_ray.cli import load_problems_or_exit
    from btp_ray.config_io import ConfigError
    from btp_ray.pipeline.run_dir import RunDirectory, RunDirectoryError, default_run_path
    from btp_ray.pipeline.runner import BTPPipeline
    from btp_ray.pipeline.services import init_ray, shutdown_ray, start_services

    run: RunDirectory | None = None
    try:
        if getattr(args, "resume", None):
            run = RunDirectory.open_existing(args.resume)
            config = run.load_config()
    except (RunDirectoryError, ConfigError) as exc:  # ConfigError: a saved config this version cannot read
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    missing = config.missing_api_key()
    if missing:
        print(
            f"error: the source model {config.sampling.model!r} is an API model and no key was given: "
            f"pass --api-key or set {missing}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    load_problems_or_exit(config)  # before the run directory is claimed and before Ray starts
    if run is None:
        try:
            run = RunDirectory.create(Path(config.output_dir or default_run_path(config.name)), config)
        except RunDirectoryError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    configure_logging(config.debug, run.log_file)
    logger.info("run directory: %s%s", run.path, " (resumed)" if getattr(args, "resume", None) else "")
    started = time.perf_counter()
    pipeline = BTPPipeline(config, run)
    init_ray(config, getattr(args, "ray_address", None))
    try:
        services = start_services(config, run)
        try:
            results = pipeline.execute(services)
        finally:
            services.close()
    except KeyboardInterrupt:
        logger.warning("interrupted: continue with --resume %s", run.path)
        return EXIT_INTERRUPTED
    finally:
        shutdown_ray()
    _print_summary(run.path, results, time.perf_counter() - started)
    return EXIT_OK


def _describe(label: str, summary: dict[str, Any]) -> str:
    rsr = summary.get("rsr")
    text = (
        f"  {label:<9} greedy pass@1 {summary['greedy_pass_at_1']:.3f}  mean pass rate {summary['mean_pass_rate']:.3f}"
        f"  ({summary['solved']}/{summary['num_problems']} solved)"
    )
    return text + (f"  RSR {rsr:.1f}" if rsr is not None else "")


def _print_summary(path: Path, results: dict[str, Any], wall_s: float) -> None:
    final, baseline = results.get("final"), results.get("baseline")
    print(f"\nBTP run finished in {wall_s:.0f} s: {path}")
    if baseline:
        print(_describe("baseline", baseline))
    if final and final is not baseline:
        print(_describe("final", final))
    print(f"  report: {path / 'report.md'}")
