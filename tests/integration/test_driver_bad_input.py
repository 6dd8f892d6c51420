"""Bad input to the real drivers (``jobs/*.py`` as subprocesses): a dataset that is not there ends the command in
seconds, before Ray or a model starts, with one line naming the dataset, what was tried and the fix, exit code 2
and no traceback. The failed start claims nothing, so the same command again fails the same way (not with "already
holds a run") and, once the data is there, runs.

The hub is made unreachable for real: ``HF_ENDPOINT`` points at a closed port on 127.0.0.1, so these tests behave the
same on a machine with internet."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DRIVERS = ("btp", "baseline", "ablation", "hyperparam", "big_to_small", "main_experiment")
DEADLINE_S = 10.0
# Three MBPP-format tasks (the original release's fields) for the retry once the data is there.
MBPP_ROWS = [
    {"task_id": 11, "text": "Write a function to add two numbers.", "code": "def add(a, b):\r\n    return a + b",
     "test_list": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"], "test_setup_code": "",
     "challenge_test_list": []},
    {"task_id": 12, "text": "Write a function to double a number.", "code": "def double(x):\r\n    return 2 * x",
     "test_list": ["assert double(2) == 4", "assert double(0) == 0"], "test_setup_code": "",
     "challenge_test_list": []},
    {"task_id": 13, "text": "Write a function to negate a number.", "code": "def negate(x):\r\n    return -x",
     "test_list": ["assert negate(2) == -2", "assert negate(-3) == 3"], "test_setup_code": "",
     "challenge_test_list": []},
]  # fmt: skip


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def offline_env(tmp_path: Path) -> dict[str, str]:
    """No local MBPP, no offline flag, no proxy, and a hub endpoint that refuses connections."""
    drop = ("BTP_DATA_DIR", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY",
            "https_proxy", "ALL_PROXY", "all_proxy")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}", HF_HOME=str(tmp_path / "hf"), PYTHONUNBUFFERED="1")
    return env


def run_driver(driver: str, args: list[str], env: dict[str, str], timeout: float = 120) -> tuple[Any, float]:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(REPO / "jobs" / f"{driver}.py"), *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env,
    )  # fmt: skip
    return proc, time.monotonic() - started


def assert_one_line_exit_2(proc: Any, elapsed: float, driver: str) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert elapsed < DEADLINE_S, f"{driver} took {elapsed:.1f} s"
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    prefix = "error: " if driver == "btp" else f"jobs/{driver}.py: error: "
    assert lines[0].startswith(prefix)
    return lines[0]


@pytest.mark.parametrize("driver", DRIVERS)
def test_mbpp_without_data_or_network_fails_in_seconds_on_one_line(driver: str, tmp_path: Path) -> None:
    env = offline_env(tmp_path)
    out = tmp_path / "out"
    for _ in range(2):  # the same command twice: the first attempt left nothing behind
        proc, elapsed = run_driver(driver, ["--dataset", "mbpp", "--output-dir", str(out)], env)
        line = assert_one_line_exit_2(proc, elapsed, driver)
        assert "dataset 'mbpp'" in line and "BTP_DATA_DIR not set" in line  # names the dataset and what was tried
        assert "Hugging Face hub (google-research-datasets/mbpp) is unreachable" in line
        assert "fix: pass --data-path" in line  # and the fix
        assert not out.exists()


def test_offline_mode_without_a_cached_copy_fails_in_seconds_on_one_line(tmp_path: Path) -> None:
    env = {**offline_env(tmp_path), "HF_HUB_OFFLINE": "1"}  # datasets answers from its (empty) cache at once
    proc, elapsed = run_driver("btp", ["--dataset", "mbpp-sanitized", "--output-dir", str(tmp_path / "out")], env)
    line = assert_one_line_exit_2(proc, elapsed, "btp")
    assert "dataset 'mbpp-sanitized'" in line and "OfflineModeIsEnabled" in line and "sanitized-mbpp.json" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("driver", DRIVERS)
def test_data_path_to_a_missing_file_fails_in_seconds_on_one_line(driver: str, tmp_path: Path) -> None:
    env = offline_env(tmp_path)
    missing = tmp_path / "data" / "mbpp.jsonl"
    out = tmp_path / "out"
    for _ in range(2):
        proc, elapsed = run_driver(driver, ["--dataset", "mbpp", "--data-path", str(missing), "--output-dir", str(out)],
                                   env)  # fmt: skip
        line = assert_one_line_exit_2(proc, elapsed, driver)
        assert f"dataset 'mbpp', file '{missing}': file not found" in line and "fix: pass --data-path" in line
        assert not out.exists()


@pytest.mark.slow  # a whole (small) BTP run: about 1.5 min on a busy 2-core machine
def test_the_same_btp_command_runs_once_the_data_is_there(tmp_path: Path) -> None:
    """The retry after a failed start: the directory an earlier version's failed start left claimed (state.json,
    nothing done) is taken over, and the run completes on the data that is now in place."""
    from btp_ray.experiment_config import ExperimentConfig
    from btp_ray.pipeline.run_dir import RunDirectory

    env = offline_env(tmp_path)
    data = tmp_path / "data" / "mbpp.jsonl"
    out = tmp_path / "out"
    command = ["--dataset", "mbpp", "--data-path", str(data), "--output-dir", str(out), "--mode", "btp_only",
               "--max-problems", "2", "--num-beams", "1", "--max-new-tokens", "24", "--n-iterations", "1",
               "--set", "eval_fraction=0.5"]  # fmt: skip
    proc, elapsed = run_driver("btp", command, env)
    assert_one_line_exit_2(proc, elapsed, "btp")
    RunDirectory.create(out, ExperimentConfig())  # what a failed start used to leave: a claimed, unstarted run
    data.parent.mkdir(parents=True)
    data.write_text("".join(json.dumps(row) + "\n" for row in MBPP_ROWS))
    proc, _ = run_driver("btp", command, env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "BTP run finished" in proc.stdout
    results = json.loads((out / "btp_results.json").read_text())
    assert {*results["train_problems"], *results["eval_problems"]} <= {"Mbpp/11", "Mbpp/12", "Mbpp/13"}
    assert len(results["train_problems"]) == 1 and len(results["eval_problems"]) == 1


def test_resume_of_a_run_whose_saved_config_this_version_cannot_read_names_the_field(tmp_path: Path) -> None:
    from btp_ray.experiment_config import ExperimentConfig
    from btp_ray.pipeline.run_dir import RunDirectory

    run = RunDirectory.create(tmp_path / "run", ExperimentConfig())
    saved = run.path / "config.yaml"
    saved.write_text(saved.read_text().replace("sampling:\n", "sampling:\n  backoff_base_s: 1.0\n", 1))  # since removed
    proc, elapsed = run_driver("btp", ["--resume", str(run.path)], offline_env(tmp_path))
    line = assert_one_line_exit_2(proc, elapsed, "btp")
    assert f"{saved}: sampling.backoff_base_s: unknown field" in line


@pytest.mark.parametrize("driver", ("btp", "big_to_small", "ablation"))
def test_a_missing_or_malformed_samples_file_fails_in_seconds_on_one_line(driver: str, tmp_path: Path) -> None:
    env = offline_env(tmp_path)
    out = tmp_path / "out"
    missing = tmp_path / "missing.jsonl"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": "HumanEval/0", "completion": "    return 1\\n"}\n{"completion": "x"}\n')
    for path, expected in ((missing, f"samples file {missing} not found"), (bad, f"{bad}:2: field 'task_id'")):
        args = ["--source-model", f"samples:{path}", "--target-model", "smollm2-135m", "--output-dir", str(out)]
        proc, elapsed = run_driver(driver, args, env)
        line = assert_one_line_exit_2(proc, elapsed, driver)
        assert expected in line
        assert not out.exists()
