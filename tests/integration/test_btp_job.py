"""The main job end to end, for real: ``python jobs/btp.py`` as a subprocess on the embedded SmolLM2-135M, a couple
of HumanEval problems, beam search k=2, the real sandbox pool, replay buffer and a few LoRA steps in Ray Train —
then a kill mid-iteration and a resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "--max-problems", "3", "--num-beams", "2", "--max-new-tokens", "40", "--batch-size", "4",
    "--set", "problem_batch_size=1", "--set", "eval_fraction=0.34",
    "--set", "training.max_steps=2", "--set", "training.max_seq_len=384", "--set", "training.per_device_batch_size=2",
]  # fmt: skip
EXPECTED_FILES = ("config.yaml", "environment.json", "state.json", "candidates.jsonl", "metrics.json",
                  "btp_results.json", "report.md", "logs/driver.log")  # fmt: skip


def run_job(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, str(REPO / "jobs" / "btp.py"), *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env,
    )  # fmt: skip


def btp_lines(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "candidates.jsonl").read_text().splitlines()]


def check_complete_run(run: Path) -> dict:
    for name in EXPECTED_FILES:
        assert (run / name).is_file(), f"{name} missing from {run}"
    results = json.loads((run / "btp_results.json").read_text())
    assert len(results["train_problems"]) == 2 and len(results["eval_problems"]) == 1
    assert not set(results["train_problems"]) & set(results["eval_problems"])
    lines = btp_lines(run)
    beams = [r for r in lines if r["phase"] == "btp"]
    # every training problem once, k candidates each, no duplicate
    assert Counter(r["task_id"] for r in beams) == {t: 2 for t in results["train_problems"]}
    assert len({(r["task_id"], r["rank"]) for r in beams}) == len(beams)
    for r in beams:
        assert 0.0 <= r["pass_rate"] <= 1.0 and len(r["per_test"]) == r["total"] > 0
        assert 0.0 < r["possibility"] <= 1.0 and r["p2value"] is not None
    evals = [r for r in lines if r["phase"] == "eval"]
    assert {(r["iteration"], r["kind"]) for r in evals} == {(0, "greedy"), (1, "greedy")}
    (iteration,) = [h for h in results["iterations"] if h["iteration"] == 1]
    assert iteration["train"]["examples"] == 4
    adapter = Path(iteration["train"]["adapter_dir"])
    assert (adapter / "adapter_config.json").is_file() and (adapter / "manifest.json").is_file()
    # the evaluation after training ran on the new adapter
    assert {r["sampler"]["adapter"] for r in evals if r["iteration"] == 1} == {iteration["train"]["adapter"]}
    assert {r["sampler"]["adapter"] for r in evals if r["iteration"] == 0} == {None}
    assert results["final"]["num_problems"] == 1 and results["baseline"]["num_problems"] == 1
    report = (run / "report.md").read_text()
    assert "greedy pass@1" in report and iteration["train"]["adapter"] in report
    return results


def test_btp_job_end_to_end_on_the_embedded_model(tmp_path: Path) -> None:
    run = tmp_path / "run"
    out = run_job(*TINY, "--output-dir", str(run))
    assert out.returncode == 0, out.stderr[-4000:]
    results = check_complete_run(run)
    assert "BTP run finished" in out.stdout and "iter   1 |" in out.stdout
    assert results["mode"] == "finetune" and results["source_model"] == "smollm2-135m"
    config_text = (run / "config.yaml").read_text()
    assert "mode: finetune" in config_text


@pytest.mark.slow
def test_killed_run_resumes_without_duplicates_or_gaps(tmp_path: Path) -> None:
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, str(REPO / "jobs" / "btp.py"), *TINY, "--output-dir", str(run)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 600
    try:
        # kill once the first training problem's candidates are logged, before the iteration is over
        while time.monotonic() < deadline:
            log = run / "candidates.jsonl"
            if log.exists() and any(r["phase"] == "btp" for r in btp_lines(run)):
                break
            assert process.poll() is None, process.stdout.read()[-3000:]
            time.sleep(0.5)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    state = json.loads((run / "state.json").read_text())
    assert not state["finished"]
    before = [r for r in btp_lines(run) if r["phase"] == "btp"]
    assert 0 < len(before) < 4
    out = run_job("--resume", str(run))
    assert out.returncode == 0, out.stderr[-4000:]
    check_complete_run(run)
    after = [r for r in btp_lines(run) if r["phase"] == "btp"]
    assert after[: len(before)] == before  # nothing logged before the kill was rewritten or lost
