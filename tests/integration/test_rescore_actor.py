"""``rescore_buffer`` as the runner calls it after a training phase: a Ray task loads the embedded SmolLM2-135M with
an adapter trained here, re-scores the run's real replay actor (with its checkpoint directory), and the actor's
possibilities become the scorer's; the update is journaled, so a restarted actor holds them too. With the option off
the actor is not touched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from btp_ray.data.types import Problem
from btp_ray.pipeline.rescore import rescore_buffer, target_scorer
from btp_ray.replay import create_replay_actor
from btp_ray.replay.service import ReplayService
from tests.rescore_data import buffered_programs, rescore_config, short_problems, train_adapter


@pytest.fixture(scope="module")
def problems() -> list[Problem]:
    return short_problems()


@pytest.fixture(scope="module")
def trained_dir(problems: list[Problem], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_adapter(problems[0], tmp_path_factory.mktemp("iter_1"))


@pytest.mark.slow  # trains SmolLM2-135M for three steps and loads it in a Ray task: minutes on a loaded CPU
def test_rescore_buffer_updates_the_replay_actor(ray_cluster, problems, trained_dir: Path, tmp_path: Path) -> None:
    ray = ray_cluster
    config = rescore_config()
    by_id = {p.task_id: p for p in problems}
    actor = create_replay_actor(config.replay, "btp-replay-rescore-test", tmp_path / "buffer")
    try:
        ray.get(actor.add.remote(buffered_programs(problems)))
        before = ray.get(actor.entries.remote())

        assert rescore_buffer(actor, rescore_config(on=False), trained_dir, by_id) is None
        unchanged = ray.get(actor.entries.remote())
        assert unchanged[1] == before[1]

        summary = rescore_buffer(actor, config, trained_dir, by_id)
        assert summary is not None
        assert (summary["rescored"], summary["skipped"], summary["missing"]) == (4, 1, 0)
        _, records = ray.get(actor.entries.remote())
        known = [r for r in records if r.problem_id in by_id]
        scorer = target_scorer(config, trained_dir)
        scores = scorer.score([by_id[r.problem_id] for r in known], [r.code for r in known], config.generation)
        assert summary["scored_by"] == scorer.identity
        for record, score in zip(known, scores, strict=True):
            assert record.possibility == pytest.approx(score.possibility, rel=1e-5)
        assert summary["mean_possibility_after"] == pytest.approx(sum(s.possibility for s in scores) / len(scores))
        assert records[-1] == before[1][-1]  # not one of the run's problems
    finally:
        ray.kill(actor, no_restart=True)
    recovered = ReplayService(config.replay, tmp_path / "buffer")  # snapshot + journal: the update survived
    assert [r.possibility for r in recovered.entries()[1]] == [r.possibility for r in records]


@pytest.mark.slow  # a whole BTP job on SmolLM2-135M: minutes
def test_btp_job_rescores_the_buffer_after_training(tmp_path: Path) -> None:
    """``--rescore-after-train`` through ``jobs/btp.py``: the iteration's metrics say every buffered program was
    re-scored, and the buffer left on disk holds, for each, the possibility the target with that iteration's adapter
    gives it."""
    import yaml

    from btp_ray.data import load_problems
    from btp_ray.experiment_config import build_experiment_config
    from tests.integration.test_btp_job import TINY, run_job

    run = tmp_path / "run"
    out = run_job(*TINY, "--rescore-after-train", "--output-dir", str(run))
    assert out.returncode == 0, out.stderr[-4000:]
    metrics = json.loads((run / "metrics.json").read_text())
    (iteration,) = [h for h in metrics["iterations"] if h["iteration"] == 1]
    rescore = iteration["rescore"]
    assert rescore["rescored"] + rescore["skipped"] == iteration["buffer"]["size"] and rescore["missing"] == 0
    assert rescore["scored_by"].endswith("+" + iteration["train"]["adapter"])
    assert rescore["mean_possibility_after"] != pytest.approx(rescore["mean_possibility_before"], rel=1e-6)

    config = build_experiment_config(yaml.safe_load((run / "config.yaml").read_text()))
    _, buffered = ReplayService(config.replay, run / "buffer").entries()
    records = [r for r in buffered if r.code.strip()]  # an empty program has nothing to score: left as it was
    assert rescore["rescored"] == len(records) > 0
    by_id = {p.task_id: p for p in load_problems("humaneval")}
    scores = target_scorer(config, iteration["train"]["adapter_dir"]).score(
        [by_id[r.problem_id] for r in records], [r.code for r in records], config.generation
    )
    for record, score in zip(records, scores, strict=True):
        assert record.possibility == pytest.approx(score.possibility, rel=1e-5)
    mean_after = sum(r.possibility for r in records) / len(records)
    assert rescore["mean_possibility_after"] == pytest.approx(mean_after, rel=1e-9)
