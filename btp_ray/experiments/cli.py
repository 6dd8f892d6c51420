"""Command lines of the suite's jobs (``jobs/baseline.py``, ``ablation.py``, ``hyperparam.py``, ``big_to_small.py``,
``main_experiment.py``): the original suite's flags on top of the BTP flags of :mod:`btp_ray.cli`, each job's own flags,
and the run itself (Ray up, logging to the run's directory, one summary line per result at the end)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from btp_ray.cli import BTP_FLAGS, Flag, add_flags, flag_spellings, load_problems_or_exit, parse_experiment_args
from btp_ray.experiment_config import PRESETS, ExperimentConfig

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1


def experiment_parser(prog: str, description: str, flags: Sequence[Flag] = BTP_FLAGS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_flags(parser, flags)
    parser.add_argument("--ray-address", default=None, help="Ray cluster to join (default: start a local one)")
    return parser


def _ablation_flags(parser: argparse.ArgumentParser) -> None:
    from btp_ray.experiments.ablation import DEFAULT_ARMS, Arm
    from btp_ray.experiments.training import TrainerKind

    group = parser.add_argument_group("ablation")
    group.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training/replay seeds (>= 3 for CIs)")
    group.add_argument("--arms", nargs="+", choices=[a.value for a in Arm], default=[a.value for a in DEFAULT_ARMS])
    group.add_argument(
        *flag_spellings("--budget"), type=int, default=None, help="examples per fit (default: --batch-size)"
    )
    group.add_argument(
        "--trainer",
        choices=[t.value for t in TrainerKind],
        default=TrainerKind.LOCAL.value,
        help="local: the one-process Learner (fast on CPU); ray_train: a TorchTrainer per fit",
    )


def _hyperparam_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("hyperparameter study")
    group.add_argument(*flag_spellings("--search-type"), choices=("focused", "grid", "random"), default="focused")
    group.add_argument(*flag_spellings("--max-configs"), type=int, default=15)
    group.add_argument(*flag_spellings("--study-seed"), type=int, default=0, help="seed of the search and the trials")
    group.add_argument(
        *flag_spellings("--early-stopping"), choices=("on", "off"), default="on", help="ASHA on the loss"
    )


def _ablation_settings(args: argparse.Namespace) -> Any:
    from btp_ray.experiments.ablation import AblationSettings

    return AblationSettings(arms=tuple(args.arms), seeds=tuple(args.seeds), budget=args.budget, trainer=args.trainer)


def _hyperparam_settings(args: argparse.Namespace) -> Any:
    from btp_ray.experiments.hyperparam import HyperparamSettings

    return HyperparamSettings(
        search_type=args.search_type,
        max_configs=args.max_configs,
        seed=args.study_seed,
        early_stopping=args.early_stopping == "on",
    )


def _settings_or_exit(parser: argparse.ArgumentParser, build: Any, args: argparse.Namespace) -> Any:
    try:
        return build(args)
    except ValueError as exc:
        parser.error(str(exc))


def default_output_dir(prefix: str) -> Path:
    return Path("experiments") / "results" / f"{prefix}_{datetime.now().strftime('%Y%m%d_%H%M%S')}"


def _start(config: ExperimentConfig, output_dir: Path, args: argparse.Namespace, *, dashboard: bool = False) -> None:
    from btp_ray.pipeline import configure_logging
    from btp_ray.pipeline.services import init_ray

    output_dir.mkdir(parents=True, exist_ok=True)
    configure_logging(config.debug, output_dir / "logs" / "driver.log")
    url = init_ray(config, args.ray_address, dashboard=dashboard)
    if url:
        print(f"Ray dashboard (Tune trials under Jobs / Actors): http://{url}", flush=True)


def baseline_main(argv: Sequence[str] | None = None) -> int:
    from btp_ray.experiments.baseline import BaselineSettings, run_baseline
    from btp_ray.pipeline.services import start_study_services

    parser = experiment_parser(
        "jobs/baseline.py", "Sample-and-filter baseline: n samples per problem, sandboxed tests, pass@k."
    )
    args, config = parse_experiment_args(parser, argv)
    settings = _settings_or_exit(parser, lambda a: BaselineSettings(num_samples=config.eval_samples or 10), args)
    output_dir = Path(config.output_dir or default_output_dir("baseline"))
    train, evaluation = load_problems_or_exit(config, parser.prog, need_train=False)
    _start(config, output_dir, args)
    with start_study_services(config) as services:
        results = run_baseline(config, settings, services, [*train, *evaluation], output_dir)
    print(
        f"baseline: {results['num_problems']} problems × {results['samples_per_problem']} samples: "
        + ", ".join(f"{k} {v:.3f}" for k, v in results["pass_at_k"].items())
        + f", mean pass rate {results['mean_pass_rate']:.3f}, filter accuracy {results['filter_accuracy']:.3f}\n"
        f"  results: {output_dir / 'baseline_experiment_results.json'}"
    )
    return EXIT_OK


def ablation_main(argv: Sequence[str] | None = None) -> int:
    from btp_ray.experiments.ablation import AblationStudy
    from btp_ray.experiments.training import make_trainer
    from btp_ray.pipeline.services import start_study_services

    parser = experiment_parser("jobs/ablation.py", "Replay-strategy ablation over one shared candidate pool.")
    _ablation_flags(parser)
    args, config = parse_experiment_args(parser, argv)
    settings = _settings_or_exit(parser, _ablation_settings, args)
    if config.training is None:
        parser.error("the ablation fine-tunes a local target: use --mode finetune or hybrid with --target-model")
    output_dir = Path(config.output_dir or default_output_dir("ablation"))
    train, evaluation = load_problems_or_exit(config, parser.prog)
    _start(config, output_dir, args)
    with start_study_services(config) as services:
        study = AblationStudy(
            config, settings, services=services, trainer=make_trainer(settings.trainer, config.training),
            train_problems=train, eval_problems=evaluation, output_dir=output_dir,
        )  # fmt: skip
        results = study.run()
    print(f"ablation over pool {results['pool']['digest'][:12]} ({results['pool']['candidates']} candidates):")
    for arm, agg in results["aggregate"].items():
        stat = agg["metrics"].get("eval_mean_pass_rate") or agg["metrics"].get("final_loss")
        shown = f"{stat['mean']:.3f}" if stat else "–"
        print(f"  {arm:<18} seeds ok {agg['seeds_ok']}  {', '.join(agg['statuses'])}  {shown}")
    print(f"  results: {output_dir / 'ablation_results.json'}")
    return EXIT_OK


def hyperparam_main(argv: Sequence[str] | None = None) -> int:
    from btp_ray.experiments.hyperparam import run_hyperparam_study
    from btp_ray.experiments.pool import CandidatePool, build_pool
    from btp_ray.pipeline.services import start_study_services

    parser = experiment_parser(
        "jobs/hyperparam.py", "Hyperparameter study as Ray Tune trials over one shared candidate pool."
    )
    _hyperparam_flags(parser)
    parser.add_argument("--pool", default=None, help="reuse a candidate pool file (e.g. an ablation's)")
    parser.add_argument(
        *flag_spellings("--dashboard"), choices=("on", "off"), default="on", help="start the Ray dashboard"
    )
    args, config = parse_experiment_args(parser, argv)
    settings = _settings_or_exit(parser, _hyperparam_settings, args)
    if config.training is None:
        parser.error("the study fine-tunes a local target: use --mode finetune or hybrid with --target-model")
    output_dir = Path(config.output_dir or default_output_dir("hyperparameter"))
    train, evaluation = load_problems_or_exit(config, parser.prog)
    _start(config, output_dir, args, dashboard=args.dashboard == "on")
    if args.pool:
        pool = CandidatePool.load(args.pool)
    else:
        with start_study_services(config) as services:
            pool, _ = build_pool(services.source, services.executor, train, config.generation,
                                 batch_size=config.problem_batch_size)  # fmt: skip
        pool.save(output_dir / "candidate_pool.json")
    results = run_hyperparam_study(
        config, settings, pool=pool, train_problems=train, eval_problems=evaluation, output_dir=output_dir
    )
    best = results["best"]
    print(
        f"hyperparameter study: {results['num_trials']} trials, {results['num_errors']} failed, "
        f"{results['num_stopped_early']} stopped early\n  best: {best['knobs'] if best else None}\n"
        f"  results: {output_dir / 'hyperparameter_study_results.json'}"
    )
    return EXIT_OK


def big_to_small_main(argv: Sequence[str] | None = None) -> int:
    from btp_ray.experiments.big_to_small import BigToSmallError, run_big_to_small

    parser = experiment_parser("jobs/big_to_small.py", "Big (or API) source model samples → small target fine-tuned.")
    args, config = parse_experiment_args(parser, argv)
    output_dir = Path(config.output_dir or default_output_dir("big_to_small"))
    missing = config.missing_api_key()
    if missing:
        parser.error(f"the source {config.sampling.model!r} is an API model: pass --api-key or set {missing}")
    load_problems_or_exit(config, parser.prog)  # the pipeline loads them again, once Ray is up
    _start(config, output_dir, args)
    try:
        summary = run_big_to_small(config, output_dir)
    except BigToSmallError as exc:
        parser.error(str(exc))
    before, after = summary["before"] or {}, summary["after"] or {}
    print(
        f"big-to-small {summary['source_model']} → {summary['target_model']}: greedy pass@1 "
        f"{before.get('greedy_pass_at_1')} → {after.get('greedy_pass_at_1')}, RSR {summary['rsr']}\n"
        f"  results: {output_dir / 'big_to_small_results.json'}"
    )
    return EXIT_OK


MAIN_FLAGS: tuple[Flag, ...] = (
    *(f for f in BTP_FLAGS if f.path != "mode"),
    Flag(("--btp-mode", "--btp_mode"), "mode", "the BTP mode: btp_only | finetune | openai | deepseek | hybrid"),
)


def parse_main_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, ExperimentConfig, Any]:
    """The main runner's flags: (namespace, experiment config, :class:`~.suite.SuiteSettings`)."""
    from btp_ray.experiments.baseline import BaselineSettings
    from btp_ray.experiments.suite import EXPERIMENTS, SuiteSettings, steps_for

    parser = experiment_parser(
        "jobs/main_experiment.py", "Run the suite's steps into one directory and write one report.", MAIN_FLAGS
    )
    parser.add_argument("--experiment", choices=EXPERIMENTS, default="all")
    parser.add_argument(
        "--mode", choices=tuple(PRESETS), default=None, help="size preset (max-problems/num-beams/n-iterations)"
    )
    parser.add_argument(
        *flag_spellings("--baseline-samples"), type=int, default=None, help="baseline samples per problem"
    )
    parser.add_argument(
        *flag_spellings("--target-model-small"), default=None, help="big-to-small target (default: target)"
    )
    parser.add_argument(
        *flag_spellings("--dashboard"), choices=("on", "off"), default="off", help="start the Ray dashboard"
    )
    _ablation_flags(parser)
    _hyperparam_flags(parser)
    raw = list(sys.argv[1:] if argv is None else argv)
    preset = _preset_of(raw)
    args, config = parse_experiment_args(parser, [*(["--preset", preset] if preset else []), *raw], MAIN_FLAGS)
    samples = args.baseline_samples or config.eval_samples or 10
    settings = _settings_or_exit(
        parser,
        lambda a: SuiteSettings(
            steps=steps_for(a.experiment),
            preset=a.mode,
            baseline=BaselineSettings(num_samples=samples),
            ablation=_ablation_settings(a),
            hyperparam=_hyperparam_settings(a),
            target_model=a.target_model_small,
        ),
        args,
    )
    return args, config, settings


def main_experiment_main(argv: Sequence[str] | None = None) -> int:
    from btp_ray.experiments.suite import Suite

    args, config, settings = parse_main_args(argv)
    output_dir = Path(config.output_dir or default_output_dir("experiment"))
    from btp_ray.experiments.suite import Step

    # Each step loads them again once Ray is up; only the baseline alone can do without training problems.
    load_problems_or_exit(config, "jobs/main_experiment.py", need_train=set(settings.steps) != {Step.BASELINE})
    _start(config, output_dir, args, dashboard=args.dashboard == "on")
    suite = Suite(config, settings, output_dir).run()
    print(f"\nexperiment suite ({args.experiment}, preset {args.mode}): {output_dir}")
    for name, step in suite["steps"].items():
        print(f"  {name:<13} {step['status']:<7} {step['wall_s']:.0f} s  {step.get('error') or step['dir']}")
    print(f"  report: {output_dir / 'experiment_report.md'}")
    return EXIT_OK if all(s["status"] == "ok" for s in suite["steps"].values()) else EXIT_FAILED


def _preset_of(argv: Sequence[str]) -> str | None:
    """The main runner's ``--mode`` is the original suite's size preset; it becomes ``--preset`` so that flags given
    after it win."""
    for i, arg in enumerate(argv):
        value = argv[i + 1] if arg == "--mode" and i + 1 < len(argv) else None
        if arg.startswith("--mode="):
            value = arg.split("=", 1)[1]
        if value in PRESETS:
            return value
    return None  # no preset, or an invalid one that argparse reports under --mode
