"""Command-line front end: the original suite's flags mapped onto the typed experiment config, YAML files and
``--set section.field=value`` overrides, and the ``btp`` console script.

Precedence: defaults ← ``--preset`` ← ``--config FILE`` ← flags ← ``--set``. An invalid value exits with code 2
and a message naming the flag. Library code never calls this; drivers in ``jobs/`` do.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from btp_ray.config_io import ConfigError, deep_merge, load_yaml, parse_override, set_path, to_dict

EXIT_USAGE = 2


def str2bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


@dataclass(frozen=True)
class Flag:
    """A CLI flag bound to one config field (dotted path)."""

    names: tuple[str, ...]
    path: str
    help: str
    type: Callable[[str], Any] = str
    choices: tuple[str, ...] | None = None
    boolean: bool = False

    @property
    def display(self) -> str:
        return self.names[0]


def flag_spellings(name: str) -> tuple[str, ...]:
    """``--num-beams`` and ``--num_beams``: the original suite used dashes in some scripts and underscores in others,
    so both are accepted (a name without an inner dash has one spelling)."""
    underscored = "--" + name[2:].replace("-", "_")
    return (name,) if underscored == name else (name, underscored)


BTP_FLAGS: tuple[Flag, ...] = (
    Flag(
        flag_spellings("--mode"),
        "mode",
        "btp_only | finetune | openai | deepseek | hybrid",
        choices=("btp_only", "finetune", "openai", "deepseek", "hybrid"),
    ),
    Flag(
        (*flag_spellings("--source-model"), "--model-name", "--model_name", "--model"),
        "sampling.model",
        "model that samples candidates: hub id, local path, alias (smollm2-135m, deepseek-1.3b) or API model",
    ),
    Flag(flag_spellings("--target-model"), "training.base_model", "local model fine-tuned (default: the source model)"),
    Flag(
        flag_spellings("--api-base"),
        "sampling.api_base",
        "OpenAI-compatible endpoint (deepseek mode: https://api.deepseek.com)",
    ),
    Flag(flag_spellings("--dataset"), "dataset", "humaneval | mbpp | mbpp-sanitized | apps | codecontests"),
    Flag(flag_spellings("--data-path"), "data_path", "local dataset file or directory (MBPP, APPS, CodeContests)"),
    Flag(
        (*flag_spellings("--max-problems"), "--num-problems", "--num_problems"),
        "max_problems",
        "problems used (split into train and held-out eval)",
        int,
    ),
    Flag(flag_spellings("--num-beams"), "generation.num_candidates", "beam width k (candidates per problem)", int),
    Flag(flag_spellings("--num-samples"), "eval_samples", "samples per problem for pass@k evaluation", int),
    Flag(flag_spellings("--n-iterations"), "n_iterations", "BTP iterations (sample → test → replay → fine-tune)", int),
    Flag(
        flag_spellings("--batch-size"),
        "batch_size",
        "experiences drawn from the replay buffer per fine-tuning round",
        int,
    ),
    Flag(flag_spellings("--sampling-method"), "replay.strategy", "power | rank | uniform | pass_rate | possibility"),
    Flag(flag_spellings("--sampling-alpha"), "replay.beta", "priority exponent β of the replay sampling", float),
    Flag(flag_spellings("--p2value-alpha"), "replay.alpha", "α in P2Value = α·possibility + (1−α)·pass_rate", float),
    Flag(
        flag_spellings("--rescore-after-train"),
        "replay.rescore_after_train",
        "after each fine-tuning round, re-score every buffered program's possibility under the new adapter",
        str2bool,
        boolean=True,
    ),
    Flag(
        flag_spellings("--use-lora"),
        "training.use_lora",
        "fine-tune LoRA adapters (true) or all weights (false)",
        str2bool,
        boolean=True,
    ),
    Flag(flag_spellings("--lora-r"), "training.lora_r", "LoRA rank", int),
    Flag(flag_spellings("--lora-alpha"), "training.lora_alpha", "LoRA alpha", int),
    Flag((*flag_spellings("--learning-rate"), "--lr"), "training.learning_rate", "learner learning rate", float),
    Flag(
        flag_spellings("--per-device-batch-size"),
        "training.per_device_batch_size",
        "learner micro-batch per worker",
        int,
    ),
    Flag(flag_spellings("--max-new-tokens"), "generation.max_new_tokens", "generation length limit", int),
    Flag(flag_spellings("--seed"), "seed", "random seed of the run", int),
    Flag(flag_spellings("--output-dir"), "output_dir", "run directory (default results/<name>_<YYYYmmdd_HHMMSS>/)"),
    Flag(flag_spellings("--debug"), "debug", "verbose logging", str2bool, boolean=True),
    Flag(("--tracker",), "tracking.backends", "trackers: mlflow,tensorboard,wandb (comma-separated) or none"),
    Flag(
        flag_spellings("--tracking-uri"),
        "tracking.uri",
        "MLflow tracking server (http://host:5000) or store; default: an embedded store in the run directory",
    ),
)


def add_flags(parser: argparse.ArgumentParser, flags: Sequence[Flag]) -> None:
    group = parser.add_argument_group("experiment flags (compatible with the original suite)")
    for flag in flags:
        kwargs: dict[str, Any] = {"dest": "flag:" + flag.path, "default": argparse.SUPPRESS, "help": flag.help}
        if flag.boolean:
            kwargs.update(nargs="?", const="true", metavar="BOOL")
        elif flag.choices:
            kwargs["metavar"] = "{" + ",".join(flag.choices) + "}"
        else:
            kwargs["metavar"] = flag.path.rpartition(".")[2].upper()
        group.add_argument(*flag.names, **kwargs)
    parser.add_argument("--config", action="append", default=[], metavar="FILE", help="YAML config (repeatable)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override any field, e.g. replay.beta=2"
    )
    from btp_ray.experiment_config import PRESETS

    sizes = ", ".join(f"{name} {p['max_problems']}/{p['num_beams']}/{p['n_iterations']}" for name, p in PRESETS.items())
    parser.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        help=f"size presets of the original suite (problems/beams/iterations: {sizes})",
    )
    parser.add_argument("--api-key", "--api_key", default=None, help="API key (else read from the environment)")


def _flag_for(path: str, flags: Sequence[Flag]) -> str:
    """The flag that sets ``path`` (or the closest enclosing one), for error messages."""
    while path:
        for flag in flags:
            if flag.path == path:
                return flag.display
        path = path.rpartition(".")[0]
    return ""


def collect_config_data(args: argparse.Namespace, flags: Sequence[Flag]) -> dict[str, Any]:
    """Merge preset, config files, flags and ``--set`` overrides into nested plain data (not yet validated)."""
    from btp_ray.experiment_config import PRESETS

    data: dict[str, Any] = {}
    if args.preset:
        preset = PRESETS[args.preset]
        data = {
            "max_problems": preset["max_problems"],
            "n_iterations": preset["n_iterations"],
            "generation": {"num_candidates": preset["num_beams"]},
        }
    for file in args.config:
        data = deep_merge(data, load_yaml(file))
    by_path = {flag.path: flag for flag in flags}
    for dest, raw in vars(args).items():
        if not dest.startswith("flag:"):
            continue
        flag = by_path[dest[len("flag:") :]]
        try:
            value = flag.type(raw)
        except (argparse.ArgumentTypeError, ValueError) as exc:
            raise ConfigError(flag.path, f"invalid value {raw!r}: {exc}") from None
        if flag.choices and value not in flag.choices:
            raise ConfigError(flag.path, f"must be one of {', '.join(flag.choices)}; got {value!r}")
        set_path(data, flag.path, value)
    for item in args.set:
        key, value = parse_override(item)
        set_path(data, key, value)
    return data


def parse_experiment_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, flags: Sequence[Flag] = BTP_FLAGS
) -> tuple[argparse.Namespace, Any]:
    """Parse ``argv`` into (namespace, ExperimentConfig); on invalid input print the flag and exit 2.

    ``--api-key`` is moved into the environment variable the sampler reads, never into the config.
    """
    from btp_ray.experiment_config import build_experiment_config

    args = parser.parse_args(argv)
    try:
        data = collect_config_data(args, flags)
        config = build_experiment_config(data)
    except ConfigError as exc:
        flag = _flag_for(exc.field, flags)
        where = f"{flag} ({exc.field})" if flag else (exc.field or "config")
        source = f" [{exc.source}]" if exc.source else ""
        message = exc.message
        leaf = exc.field.rpartition(".")[2]
        if leaf and message.startswith(f"{leaf}: "):
            message = message[len(leaf) + 2 :]
        parser.error(f"{where}: {message}{source}")
    if args.api_key:
        variable = config.api_key_env()
        if variable is None:
            parser.error("--api-key: the source model is local; an API key is only used with an API source")
        os.environ[variable] = args.api_key
        args.api_key = "***"
    return args, config


def exit_usage(message: str, prog: str | None = None) -> NoReturn:
    """End the command with one line on stderr (``prog: error: message``, newlines folded) and exit code 2."""
    prefix = f"{prog}: error: " if prog else "error: "
    print(prefix + " ".join(message.split()), file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def load_problems_or_exit(config: Any, prog: str | None = None, *, need_train: bool = True) -> tuple[list, list]:
    """The run's (training, held-out) problems, loaded before Ray or any model starts, so that a dataset (or a
    samples file of a ``samples:PATH`` source) that is not there ends the command within seconds (one line naming
    the dataset or file, what was tried and the fix; exit 2) and nothing is created that a retry would trip over."""
    from btp_ray.data import DatasetError
    from btp_ray.pipeline.runner import load_split
    from btp_ray.sources import SamplesFileError, SourceSpec, read_samples

    try:
        train, evaluation = load_split(config)
    except DatasetError as exc:
        exit_usage(str(exc), prog)
    spec = SourceSpec.parse(config.sampling.model)
    try:
        for path in spec.samples_files if spec is not None else ():
            read_samples(path)  # a missing or malformed samples file stops here, one line naming file, line, field
    except SamplesFileError as exc:
        exit_usage(str(exc), prog)
    if need_train and not train:
        exit_usage(
            f"no training problems: {len(evaluation)} problems with eval_fraction={config.eval_fraction}; "
            "raise --max-problems or lower eval_fraction (--set eval_fraction=...)",
            prog,
        )
    return train, evaluation


def build_btp_parser(prog: str = "btp run") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run BTP: beam-search sampling → sandboxed testing → P2Value-prioritized replay → fine-tuning.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_flags(parser, BTP_FLAGS)
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a killed run from its run directory")
    parser.add_argument("--ray-address", default=None, help="Ray cluster to join (default: start a local one)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    return parser


def print_config(config: Any) -> None:
    import yaml

    print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")


def main(argv: Sequence[str] | None = None) -> int:
    """The ``btp`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {
        "run": "run the BTP pipeline (same as python jobs/btp.py)",
        "config": "print the resolved config for the given flags",
        "datasets": "list the benchmark datasets and their sizes",
        "doctor": "check that the installation can run btp-ray",
        "export": "write a run's adapter, or the merged model (--merge), ready to serve",
        "plan": "where samplers, learner ranks and sandboxes go on N GPU nodes, and the memory each GPU needs",
    }
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print("usage: btp {" + ",".join(commands) + "} [flags]\n")
        for name, text in commands.items():
            print(f"  {name:<9} {text}")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nbtp: unknown command {argv[0]!r}", file=sys.stderr)
            return EXIT_USAGE
        return 0
    command, rest = argv[0], argv[1:]
    if command == "doctor":
        from btp_ray.doctor import main as doctor_main

        return doctor_main()
    if command == "datasets":
        return _datasets()
    if command == "export":
        from btp_ray.export import main as export_main

        return export_main(rest)
    if command == "plan":
        from btp_ray.planning.cli import main as plan_main

        return plan_main(rest)
    parser = build_btp_parser(f"btp {command}")
    args, config = parse_experiment_args(parser, rest)
    if command == "config" or args.print_config:
        print_config(config)
        return 0
    from btp_ray.pipeline import run_from_args

    return run_from_args(args, config)


def _datasets() -> int:
    from btp_ray.data import DATASETS, DatasetError, load_problems

    for name in DATASETS:
        try:
            problems = load_problems(name)
            print(f"{name:<16} {len(problems):>5} problems  {sum(len(p.tests) for p in problems):>6} tests")
        except DatasetError as exc:
            print(f"{name:<16} unavailable: {str(exc).splitlines()[0][:160]}")
    return 0
