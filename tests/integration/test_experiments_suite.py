"""``python jobs/main_experiment.py --experiment all`` for real, reduced (a tiny random-weight Llama, 3 problems, k = 2,
2 LoRA steps): every step runs into one directory with the original suite's layout, and the report is checked against
the JSON results: every number in its tables comes from ``suite_results.json``, the tables are well formed, every
section is there and every figure is a PNG that opens."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from btp_ray.experiments.pool import CandidatePool
from btp_ray.experiments.report import number

REPO = Path(__file__).resolve().parents[2]
SECTIONS = ("## Steps", "## 1. Sample-and-filter baseline", "## 2. BTP", "## 3. Ablation of replay strategies",
            "## 4. Hyperparameter study (Ray Tune)", "## 5. Big-to-small", "## Fine-tuning loss", "## Cost",
            "## Reproducibility")  # fmt: skip
PLOTS = ("pass_at_k", "p2value_distribution", "ablation_bars", "hyperparam_sensitivity", "loss_curves",
         "cost_breakdown")  # fmt: skip
NUMBER = re.compile(r"^-?\d+(\.\d+)?(e-?\d+)?$")


def json_numbers(data: object) -> set[str]:
    """Every number in the results, written as the report writes numbers."""
    found: set[str] = set()
    if isinstance(data, dict):
        for value in data.values():
            found |= json_numbers(value)
    elif isinstance(data, list):
        for value in data:
            found |= json_numbers(value)
    elif isinstance(data, (int, float)) and not isinstance(data, bool):
        found.add(number(data))
    return found


def markdown_tables(text: str) -> list[list[list[str]]]:
    tables, current = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            current.append(line)
            continue
        if current:
            rows = [[c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]] for row in current]
            tables.append(rows)
            current = []
    return tables


@pytest.mark.slow
def test_main_experiment_all_writes_a_report_backed_by_the_results(tmp_path: Path) -> None:
    from btp_ray.training.tiny_model import make_tiny_llama

    model = make_tiny_llama(tmp_path / "tiny")
    out = tmp_path / "suite"
    args = [
        "--experiment", "all", "--mode", "quick", "--model", str(model), "--max-problems", "3", "--num-beams", "2",
        "--max-new-tokens", "24", "--batch-size", "4", "--set", "problem_batch_size=1", "--set", "eval_fraction=0.34",
        "--set", "training.max_steps=2", "--set", "training.max_seq_len=256", "--baseline-samples", "3",
        "--max-configs", "3", "--seeds", "0", "1", "2", "--output-dir", str(out),
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "main_experiment.py"), *args],
        capture_output=True, text=True, timeout=1200, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-4000:]
    for path in ("step1_baseline/baseline_experiment_results.json", "step2_btp/btp_results.json",
                 "step3_ablation/ablation_results.json", "step4_hyperparameter/hyperparameter_study_results.json",
                 "step5_big_to_small/big_to_small_results.json", "suite_results.json", "experiment_report.md",
                 "experiment_report.txt"):  # fmt: skip
        assert (out / path).is_file(), path
    suite = json.loads((out / "suite_results.json").read_text())
    assert {name: s["status"] for name, s in suite["steps"].items()} == dict.fromkeys(
        ("baseline", "ablation", "hyperparam", "btp", "big_to_small"), "ok"
    )
    assert suite["preset"] == "quick" and suite["run"]["config"]["max_problems"] == 3  # flags win over the preset
    assert suite["run"]["seeds"] == {"run": 0, "ablation": [0, 1, 2], "hyperparam": 0}
    assert {"git_commit", "packages", "cpu_count"} <= set(suite["run"]["environment"])

    ablation = suite["steps"]["ablation"]["results"]
    pool = CandidatePool.load(out / "step3_ablation" / ablation["pool_file"])
    assert {r["pool_digest"] for r in ablation["rows"]} == {pool.digest}
    assert len(ablation["rows"]) == 6 * 3  # the six default arms (references only is asked for by name), 3 seeds
    assert {t["metrics"].get("pool_digest") for t in suite["steps"]["hyperparam"]["results"]["trials"]} <= {
        pool.digest, None
    }  # fmt: skip

    report = (out / "experiment_report.md").read_text()
    for section in SECTIONS:
        assert section in report, section
    allowed = json_numbers(suite)
    tables = markdown_tables(report)
    assert len(tables) >= 8
    for rows in tables:
        assert all(len(row) == len(rows[0]) for row in rows), rows  # well formed
        assert set(rows[1]) == {"---"}
        for row in rows[2:]:
            for value in row:
                for token in value.replace(" ± ", " ").split():
                    if NUMBER.match(token):
                        assert token in allowed, f"{token} in {row} is not in the results"
    for name in PLOTS:
        png = out / "plots" / f"{name}.png"
        assert f"(plots/{name}.png)" in report
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        import matplotlib.image

        assert matplotlib.image.imread(png).shape[0] > 100
    text = (out / "experiment_report.txt").read_text()
    assert "[figure: plots/ablation_bars.png" in text and "3. ABLATION OF REPLAY STRATEGIES" in text

    # one tracking store at the suite's root, one experiment: the BTP run, every arm and every trial side by side
    if importlib.util.find_spec("mlflow") is not None:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{(out / 'mlflow' / 'mlflow.db').resolve()}")
        runs = client.search_runs([client.get_experiment_by_name(out.name).experiment_id], max_results=500)
        studies = [r.data.tags.get("btp.study") for r in runs]
        assert "step2_btp" in {r.info.run_name for r in runs}
        assert studies.count("ablation") == 6 * 3 and studies.count("hyperparam") == 3
