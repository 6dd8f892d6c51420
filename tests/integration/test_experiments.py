"""The studies on a real local Ray with real parts: a random-weight tiny Llama (the embedded model's tokenizer and
chat template) sampled by the Ray sampler pool, the sandbox executor pool, the replay buffer, LoRA fine-tuning and
Ray Tune. The tiny model solves nothing; what is checked is the machinery: one pool shared by every arm, the same
pool on a rerun, CIs over seeds, Tune trials (one made to fail), the results written to disk, and every arm and trial
tracked as its own MLflow run in one experiment (read back through MLflow's client)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest

from btp_ray.experiment_config import build_experiment_config
from btp_ray.experiments.ablation import AblationSettings, AblationStudy, Arm
from btp_ray.experiments.hyperparam import HyperparamSettings, run_hyperparam_study
from btp_ray.experiments.pool import CandidatePool, build_pool
from btp_ray.experiments.training import make_trainer
from btp_ray.pipeline.runner import load_split
from btp_ray.pipeline.services import start_study_services


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from btp_ray.training.tiny_model import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama")


def tiny_config(model: Path) -> object:
    return build_experiment_config(
        {
            "sampling": {"model": str(model)},
            "max_problems": 3,
            "eval_fraction": 0.34,
            "batch_size": 4,
            "problem_batch_size": 1,
            "generation": {"num_candidates": 2, "max_new_tokens": 24},
            "training": {"max_steps": 2, "max_seq_len": 256, "per_device_batch_size": 2},
        }
    )


def test_ablation_and_tune_study_share_one_reproducible_pool(ray_cluster, tiny_model: Path, tmp_path: Path) -> None:
    config = tiny_config(tiny_model)
    store = tmp_path / "mlflow" / "mlflow.db"
    store.parent.mkdir()
    tracking = dataclasses.replace(config.tracking, uri=f"sqlite:///{store}", experiment="study")
    config = dataclasses.replace(config, tracking=tracking)
    train, evaluation = load_split(config)
    assert len(train) == 2 and len(evaluation) == 1
    with start_study_services(config) as services:
        again, _ = build_pool(services.model, services.executor, train, config.generation, batch_size=1)
        arms = (Arm.P2VALUE_POWER, Arm.UNIFORM, Arm.NO_REPLAY)
        study = AblationStudy(
            config,
            AblationSettings(arms=arms, seeds=(0, 1, 2)),
            services=services,
            trainer=make_trainer("local", config.training),
            train_problems=train,
            eval_problems=evaluation,
            output_dir=tmp_path / "ablation",
        )
        results = study.run()
    pool = CandidatePool.load(tmp_path / "ablation" / "candidate_pool.json")
    assert again.digest == pool.digest  # same config, seed and backend: the same sampled pool
    assert len(pool.entries) == 4 and results["pool"]["digest"] == pool.digest
    rows = results["rows"]
    assert [(r["arm"], r["seed"]) for r in rows] == [(a.value, s) for s in (0, 1, 2) for a in arms]
    assert {r["pool_digest"] for r in rows} == {pool.digest}  # every arm and seed drew from the identical pool
    for row in rows:
        if row["arm"] == "no_replay":  # the tiny model passes nothing: the filter arm has no data, and says so
            assert row["status"] == "no_data" and "train" not in row
            continue
        assert row["status"] == "ok", row.get("error")
        assert len(row["train"]["losses"]) == 2 and Path(row["train"]["adapter_dir"], "adapter_config.json").is_file()
        assert row["eval"]["num_problems"] == 1 and row["metrics"]["eval_pass_at_1"] == 0.0
    power = results["aggregate"]["p2value_power"]["metrics"]["final_loss"]
    losses = [r["metrics"]["final_loss"] for r in rows if r["arm"] == "p2value_power"]
    assert power["n"] == 3 and power["mean"] == pytest.approx(sum(losses) / 3)
    assert power["low"] <= power["mean"] <= power["high"]
    assert json.loads((tmp_path / "ablation" / "ablation_results.json").read_text())["rows"] == rows
    info = json.loads((tmp_path / "ablation" / "run_info.json").read_text())
    assert info["seeds"]["arm_seeds"] == [0, 1, 2] and "git_commit" in info["environment"]

    # Ray Tune over the same pool; the second trial's learning rate is invalid, so that trial raises.
    settings = HyperparamSettings(max_configs=3, values={"learning_rate": (2e-4, -1.0, 1e-3)}, early_stopping=False)
    study = run_hyperparam_study(
        config, settings, pool=pool, train_problems=train, eval_problems=evaluation, output_dir=tmp_path / "tune"
    )
    trials = study["trials"]
    assert [t["knobs"]["learning_rate"] for t in trials] == [2e-4, -1.0, 1e-3]
    assert [t["status"] for t in trials] == ["completed", "error", "completed"]
    assert "learning_rate" in trials[1]["error"] and study["num_errors"] == 1
    assert {t["metrics"]["pool_digest"] for t in trials if t["status"] == "completed"} == {pool.digest}
    assert all(t["metrics"]["training_iteration"] == 3 for t in trials if t["status"] == "completed")
    assert study["best"]["index"] in (0, 2)
    assert [p["value"] for p in study["sensitivity"]["learning_rate"]] == [2e-4, 1e-3]
    assert len(list(Path(study["tune_path"]).glob("tune_trainable_*"))) == 3  # Tune's own trial directories

    # every arm and every trial is its own run in the one experiment, so they compare side by side
    if importlib.util.find_spec("mlflow") is None:  # tracking is an optional extra
        return
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking.uri)
    tracked = client.search_runs([client.get_experiment_by_name("study").experiment_id], max_results=100)
    arms_tracked = {r.info.run_name: r for r in tracked if r.data.tags.get("btp.study") == "ablation"}
    assert set(arms_tracked) == {f"ablation-{r['arm']}-seed{r['seed']}" for r in rows}
    power0 = arms_tracked["ablation-p2value_power-seed0"]
    assert power0.data.params["arm"] == "p2value_power" and power0.data.params["replay.alpha"] == "0.5"
    assert power0.data.metrics["metrics/final_loss"] == pytest.approx(rows[0]["metrics"]["final_loss"])
    trials_tracked = [r for r in tracked if r.data.tags.get("btp.study") == "hyperparam"]
    assert sorted(float(r.data.params["knobs/learning_rate"]) for r in trials_tracked) == [-1.0, 2e-4, 1e-3]
    assert {r.info.status for r in trials_tracked} == {"FINISHED", "FAILED"}
    assert not (Path.cwd() / "mlruns").exists()


def test_ablation_on_references_mixed_with_the_targets_own_samples(
    ray_cluster, tiny_model: Path, tmp_path: Path
) -> None:
    """The suite with a program source: the pool holds the training problems' references (scored under the target)
    and the target's own samples; the references-only and filter arms train on the references; every arm's
    evaluation is of the target with its adapter."""
    config = build_experiment_config(
        {
            "sampling": {"model": "references+self"},
            "max_problems": 3,
            "eval_fraction": 0.34,
            "batch_size": 4,
            "problem_batch_size": 1,
            "generation": {"num_candidates": 2, "max_new_tokens": 24},
            "training": {"base_model": str(tiny_model), "max_steps": 2, "max_seq_len": 256, "per_device_batch_size": 2},
        }
    )
    assert config.mode.value == "hybrid" and config.sampling.scorer_model == str(tiny_model)
    train, evaluation = load_split(config)
    arms = (Arm.P2VALUE_POWER, Arm.REFERENCES_ONLY, Arm.NO_REPLAY)
    with start_study_services(config) as services:
        study = AblationStudy(
            config,
            AblationSettings(arms=arms, seeds=(0,)),
            services=services,
            trainer=make_trainer("local", config.training),
            train_problems=train,
            eval_problems=evaluation,
            output_dir=tmp_path / "ablation",
        )
        results = study.run()
    pool = CandidatePool.load(tmp_path / "ablation" / "candidate_pool.json")
    assert {e.task_id for e in pool.entries} == {p.task_id for p in train}
    sources = results["pool"]["by_source"]
    assert sources["reference"]["candidates"] == 2 and sources["reference"]["fully_passing"] == 2
    assert sources["model"]["candidates"] == 4
    candidates = [e.candidate for e in pool.entries]
    assert all(c.possibility is not None and 0 < c.possibility < 1 for c in candidates)
    assert {str(c.sampler) for c in candidates if c.source == "model"} == {f"hf:{tiny_model}"}
    references = {c.program for c in candidates if c.source == "reference"}
    rows = {r["arm"]: r for r in results["rows"]}
    for arm in arms:
        assert rows[arm.value]["status"] == "ok", rows[arm.value].get("error")
        assert rows[arm.value]["eval"]["num_problems"] == 1
    assert rows["references_only"]["metrics"]["batch_mean_pass_rate"] == 1.0  # only the (passing) references
    assert rows["no_replay"]["metrics"]["batch_mean_pass_rate"] == 1.0
    assert rows["p2value_power"]["metrics"]["batch_distinct"] >= 2
    assert references  # the references reached the pool verbatim
