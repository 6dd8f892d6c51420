"""The suite's command lines: the original suite's flags and presets, steps per ``--experiment``, and the BTP mode
inferred from the source model for big-to-small runs (no Ray, no model loaded)."""

from __future__ import annotations

import pytest

from btp_ray.experiments.ablation import Arm
from btp_ray.experiments.big_to_small import BigToSmallError, big_to_small_config
from btp_ray.experiments.cli import BTP_FLAGS, experiment_parser, parse_experiment_args, parse_main_args
from btp_ray.experiments.suite import Step, steps_for


def test_main_runner_mode_is_the_seed_preset_and_flags_win() -> None:
    _, config, settings = parse_main_args(["--experiment", "all", "--mode", "quick", "--max_problems", "4"])
    assert config.max_problems == 4  # the flag, over the preset's 10
    assert config.generation.num_candidates == 3 and config.n_iterations == 1  # the quick preset's 3 and 1
    assert settings.steps == tuple(Step) and settings.preset == "quick"
    _, config, _ = parse_main_args(["--mode", "full"])
    assert (config.max_problems, config.generation.num_candidates, config.n_iterations) == (100, 8, 3)
    _, config, _ = parse_main_args(["--mode", "standard", "--btp-mode", "btp_only"])
    assert config.mode.value == "btp_only" and config.max_problems == 50


def test_main_runner_study_flags_reach_the_settings() -> None:
    _, _, settings = parse_main_args(
        ["--experiment", "ablation", "--seeds", "4", "5", "6", "--arms", "uniform", "no_replay", "--budget", "8",
         "--search_type", "random", "--max_configs", "5", "--baseline_samples", "7"]
    )  # fmt: skip
    assert settings.steps == (Step.ABLATION,)
    assert settings.ablation.seeds == (4, 5, 6) and settings.ablation.arms == (Arm.UNIFORM, Arm.NO_REPLAY)
    assert settings.ablation.budget == 8 and settings.baseline.num_samples == 7
    assert settings.hyperparam.search_type.value == "random" and settings.hyperparam.max_configs == 5


def test_steps_for_each_experiment_name() -> None:
    assert steps_for("btp_finetune") == (Step.BTP,) and steps_for("hyperparam") == (Step.HYPERPARAM,)
    with pytest.raises(ValueError, match="experiment must be one of"):
        steps_for("step9")


def test_an_api_source_means_hybrid_and_big_to_small_needs_a_target(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = experiment_parser("test", "test", BTP_FLAGS)
    _, config = parse_experiment_args(parser, ["--source-model", "gpt-4o", "--target-model", "smollm2-135m"])
    assert config.mode.value == "hybrid" and config.training.base_model == "smollm2-135m"
    b2s = big_to_small_config(config)
    assert b2s.mode.value == "hybrid" and b2s.resources.sampler_cpus == config.resources.sampler_cpus / 2
    _, local = parse_experiment_args(experiment_parser("test", "test"), ["--model_name", "smollm2-135m"])
    assert local.mode.value == "finetune" and big_to_small_config(local).training.base_model == "smollm2-135m"
    _, sampling_only = parse_experiment_args(experiment_parser("test", "test"), ["--mode", "btp_only"])
    with pytest.raises(BigToSmallError, match="target"):
        big_to_small_config(sampling_only)
    _, api_only = parse_experiment_args(experiment_parser("test", "test"), ["--source-model", "gpt-4o"])
    assert api_only.mode.value == "openai" and api_only.training is None  # sampling through the API only
    with pytest.raises(BigToSmallError, match="target"):
        big_to_small_config(api_only)


def test_big_to_small_from_a_program_source_is_hybrid_and_scores_under_the_target(tmp_path) -> None:
    samples = tmp_path / "big.jsonl"
    samples.write_text('{"task_id": "HumanEval/0", "completion": "    return True\\n", "model": "big"}\n')
    parser = experiment_parser("test", "test", BTP_FLAGS)
    for source in (f"samples:{samples}", "references", "references+self"):
        _, config = parse_experiment_args(parser, ["--source-model", source, "--target-model", "smollm2-135m"])
        b2s = big_to_small_config(config, target_model="smollm2-360m")
        assert b2s.mode.value == "hybrid" and b2s.training.base_model == "smollm2-360m"
        assert b2s.sampling.model == source and b2s.sampling.scorer_model == "smollm2-360m"  # scored by the target


@pytest.mark.parametrize("driver", ["btp", "baseline", "ablation", "hyperparam", "big_to_small", "main_experiment"])
def test_help_lists_each_flag_once_and_speaks_of_the_original_suite(
    driver: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import re

    from btp_ray.cli import build_btp_parser
    from btp_ray.experiments import cli

    if driver == "btp":
        text = build_btp_parser("jobs/btp.py").format_help()
    else:
        with pytest.raises(SystemExit) as exited:
            getattr(cli, f"{driver}_main")(["--help"])
        assert exited.value.code == 0
        text = capsys.readouterr().out
    options = [line.strip() for line in text.splitlines() if line.startswith("  -")]
    assert len(options) > 20
    for line in options:
        spellings = re.findall(r"(?:^|, )(--?[\w-]+)", line)
        assert len(spellings) == len(set(spellings)), line  # "--dataset DATASET, --dataset DATASET" was printed
    assert "--num-beams NUM_CANDIDATES, --num_beams NUM_CANDIDATES" in text  # both spellings where they differ
    assert "seed's" not in text and "original suite" in text
