"""The CLI: the original suite's flags land on the right config fields, YAML and --set compose, bad values exit 2 naming
the flag, and API keys never enter the config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from btp_ray.cli import build_btp_parser, parse_experiment_args
from btp_ray.config_io import to_dict
from btp_ray.experiment_config import ExperimentConfig, Mode

REPO = Path(__file__).resolve().parents[2]


def parse(*argv: str) -> ExperimentConfig:
    _, config = parse_experiment_args(build_btp_parser(), list(argv))
    return config


def test_defaults_are_the_embedded_cpu_run() -> None:
    config = parse()
    assert config.mode is Mode.FINETUNE
    assert config.sampling.model == "smollm2-135m"
    assert config.training is not None and config.training.base_model == "smollm2-135m"
    assert config.dataset == "humaneval"


def test_seed_flags_map_to_fields() -> None:
    config = parse(
        "--mode", "finetune", "--source-model", "deepseek-1.3b", "--target-model", "smollm2-135m",
        "--dataset", "mbpp", "--max-problems", "20", "--num-beams", "4", "--n-iterations", "3",
        "--batch-size", "16", "--sampling-method", "rank", "--sampling-alpha", "2", "--p2value-alpha", "0.3",
        "--use-lora", "false", "--lora-r", "8", "--lora-alpha", "16", "--per-device-batch-size", "1",
        "--output-dir", "/tmp/x", "--debug",
    )  # fmt: skip
    assert config.sampling.model == "deepseek-1.3b"
    assert config.training.base_model == "smollm2-135m"
    assert (config.dataset, config.max_problems, config.n_iterations, config.batch_size) == ("mbpp", 20, 3, 16)
    assert config.generation.num_candidates == 4
    assert (config.replay.strategy.value, config.replay.beta, config.replay.alpha) == ("rank", 2.0, 0.3)
    assert (config.training.use_lora, config.training.lora_r, config.training.lora_alpha) == (False, 8, 16)
    assert config.training.per_device_batch_size == 1
    assert config.output_dir == "/tmp/x" and config.debug is True


def test_underscore_spellings_and_presets() -> None:
    config = parse("--max_problems", "7", "--model_name", "smollm2-135m", "--num_samples", "4")
    assert (config.max_problems, config.eval_samples) == (7, 4)
    quick = parse("--preset", "quick")
    assert (quick.max_problems, quick.generation.num_candidates, quick.n_iterations) == (10, 3, 1)
    assert parse("--preset", "full", "--num-beams", "2").generation.num_candidates == 2  # flags beat presets


def test_yaml_then_flags_then_set(tmp_path: Path) -> None:
    file = tmp_path / "exp.yaml"
    file.write_text(yaml.safe_dump({"max_problems": 9, "replay": {"beta": 3.0, "strategy": "rank"}}))
    config = parse("--config", str(file), "--sampling-alpha", "1.5", "--set", "replay.capacity=77")
    assert config.max_problems == 9
    assert config.replay.beta == 1.5
    assert config.replay.strategy.value == "rank"
    assert config.replay.capacity == 77


def test_api_modes_resolve_endpoints_and_keep_keys_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEEPSEEK_API_KEY", raising=False)
    config = parse("--mode", "deepseek", "--source-model", "deepseek-chat", "--api-key", "sk-secret-123")
    assert config.sampling.api_base == "https://api.deepseek.com"
    assert config.training is None
    dumped = yaml.safe_dump(to_dict(config))
    assert "sk-secret-123" not in dumped
    import os

    assert os.environ["DEEPSEEK_API_KEY"] == "sk-secret-123"
    hybrid = parse("--mode", "hybrid", "--source-model", "gpt-4o", "--target-model", "smollm2-135m")
    assert hybrid.trains and hybrid.training.base_model == "smollm2-135m"
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert hybrid.missing_api_key() == "OPENAI_API_KEY"


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--p2value-alpha", "1.5"], "--p2value-alpha (replay.alpha)"),
        (["--p2value-alpha", "-0.1"], "--p2value-alpha (replay.alpha)"),
        (["--sampling-alpha", "0"], "--sampling-alpha (replay.beta)"),
        (["--num-beams", "-2"], "--num-beams (generation.num_candidates)"),
        (["--max-problems", "0"], "--max-problems (max_problems)"),
        (["--max-problems", "many"], "--max-problems (max_problems): invalid value"),
        (["--n-iterations", "-1"], "--n-iterations (n_iterations)"),
        (["--mode", "turbo"], "--mode (mode): must be one of btp_only, finetune"),
        (["--sampling-method", "best"], "--sampling-method (replay.strategy)"),
        (["--lora-r", "0"], "--lora-r (training.lora_r)"),
        (["--dataset", "nope"], "--dataset (dataset)"),
        (["--mode", "hybrid", "--source-model", "gpt-4o"], "pass --target-model"),
        (["--mode", "finetune", "--source-model", "gpt-4o"], "needs a local source model"),
        (["--mode", "openai", "--source-model", "smollm2-135m"], "names a local model"),
        (["--set", "replay.colour=red"], "replay.colour: unknown field"),
        (["--source-model", "no such model"], "unknown model"),
    ],
)
def test_invalid_values_exit_2_naming_the_flag(
    argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        parse(*argv)
    assert info.value.code == 2
    assert fragment in capsys.readouterr().err


def test_missing_config_file_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("--config", str(tmp_path / "nope.yaml"))
    assert "nope.yaml" in capsys.readouterr().err


def test_btp_console_script_help_and_config() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "btp_ray", "config", "--help"], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert out.returncode == 0
    seed_flags = [
        "--source-model",
        "--target-model",
        "--mode",
        "--dataset",
        "--max-problems",
        "--num-beams",
        "--n-iterations",
        "--batch-size",
        "--sampling-method",
        "--sampling-alpha",
        "--p2value-alpha",
        "--use-lora",
        "--lora-r",
        "--lora-alpha",
        "--api-key",
        "--api-base",
        "--debug",
        "--output-dir",
    ]
    for flag in seed_flags:
        assert flag in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "btp_ray", "config", "--p2value-alpha", "2"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and "--p2value-alpha" in bad.stderr
    unknown = subprocess.run([sys.executable, "-m", "btp_ray", "frobnicate"], capture_output=True, text=True, cwd=REPO)
    assert unknown.returncode == 2 and "unknown command" in unknown.stderr
