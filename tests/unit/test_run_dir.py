"""The run directory: atomic files, the append-only candidate log and its repair after a torn write, state, resume
errors, and an environment record without secrets."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from btp_ray.execution import ExecutionResult, ExecutionStatus
from btp_ray.experiment_config import ExperimentConfig
from btp_ray.pipeline.records import TestedCandidate
from btp_ray.pipeline.run_dir import CANDIDATES, RunDirectory, RunDirectoryError, RunState, environment_record
from btp_ray.sampling import Candidate, FinishReason, SamplerIdentity


def _tested(task_id: str, n: int) -> TestedCandidate:
    """A logged candidate (its rank tells lines apart)."""
    candidate = Candidate(task_id, "pass", "def f():\n    pass\n", 2, FinishReason.STOP, SamplerIdentity("hf", "m"), n)
    return TestedCandidate(candidate, ExecutionResult(ExecutionStatus.PASSED, per_test=(True,)), num_tests=1)


def test_create_writes_config_and_refuses_to_overwrite(tmp_path: Path) -> None:
    config = ExperimentConfig(max_problems=4)
    run = RunDirectory.create(tmp_path / "run", config)
    for name in ("config.yaml", "environment.json", "state.json"):
        assert (run.path / name).is_file()
    assert run.load_config() == config
    assert run.load_state() == RunState(started_at=run.load_state().started_at)
    state = run.load_state()
    state.mark(0, "eval")
    run.save_state(state)
    with pytest.raises(RunDirectoryError, match="--resume"):
        RunDirectory.create(tmp_path / "run", config)


def test_a_run_that_never_started_does_not_block_a_retry(tmp_path: Path) -> None:
    """A failed start (no phase completed, no candidate logged) leaves nothing worth resuming: the same command
    again takes the directory over with its own config; one logged candidate is enough to refuse."""
    RunDirectory.create(tmp_path / "run", ExperimentConfig(max_problems=4))
    retry = RunDirectory.create(tmp_path / "run", ExperimentConfig(max_problems=6))
    assert retry.load_config().max_problems == 6 and retry.load_state().completed == {}
    retry.append_candidates([_tested("a", 0)])
    with pytest.raises(RunDirectoryError, match="already holds a run"):
        RunDirectory.create(tmp_path / "run", ExperimentConfig())
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "state.json").write_text('{"completed": ')  # unreadable: not taken over
    with pytest.raises(RunDirectoryError, match="already holds a run"):
        RunDirectory.create(tmp_path / "torn", ExperimentConfig())


def test_candidate_log_survives_a_torn_last_line(tmp_path: Path) -> None:
    run = RunDirectory.create(tmp_path / "run", ExperimentConfig())
    assert run.append_candidates([_tested("a", 1), _tested("b", 2)]) == 2
    with open(run.path / CANDIDATES, "a") as handle:
        handle.write('{"task_id": "c", "rank"')  # a crash in the middle of an append
    assert [r.task_id for r in run.iter_candidates()] == ["a", "b"]  # a torn line is never trusted
    resumed = RunDirectory.open_existing(run.path)
    assert (run.path / CANDIDATES).read_text().endswith('"p2value": null}\n')
    resumed.append_candidates([_tested("c", 3)])
    assert [r.candidate.rank for r in resumed.iter_candidates()] == [1, 2, 3]


def test_state_marks_phases(tmp_path: Path) -> None:
    run = RunDirectory.create(tmp_path / "run", ExperimentConfig())
    state = run.load_state()
    state.mark(1, "sample")
    state.mark(1, "sample")
    run.save_state(state)
    again = run.load_state()
    assert again.done(1, "sample") and not again.done(1, "train") and not again.done(2, "sample")
    assert again.completed == {"1": ["sample"]}


def test_resume_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(RunDirectoryError, match="does not exist"):
        RunDirectory.open_existing(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirectoryError, match="not a btp-ray run directory"):
        RunDirectory.open_existing(tmp_path / "empty")


def test_environment_record_masks_api_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["jobs/btp.py", "--api-key", "sk-live-1", "--api_key=sk-live-2", "--mode", "x"])
    record = environment_record()
    text = json.dumps(record)
    assert "sk-live" not in text
    assert record["argv"] == ["jobs/btp.py", "--api-key", "***", "--api_key=***", "--mode", "x"]
    assert "ray" in record["packages"] and record["python"].startswith("3.")
