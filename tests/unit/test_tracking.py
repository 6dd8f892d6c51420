"""Experiment tracking without a server: the embedded MLflow store read back through MLflow's client, TensorBoard
event files read back with TensorBoard's own reader, a W&B offline run directory, and a tracker that cannot be
reached (a real closed port) costing one warning and nothing else."""

from __future__ import annotations

import json
import logging
import socket
import time
from pathlib import Path

import pytest

from btp_ray.tracking import Tracking, TrackingConfig, flatten_params, iteration_metrics, open_tracking
from btp_ray.tracking.mlflow_backend import MLflowTracker, embedded_store
from btp_ray.tracking.tensorboard_backend import TensorBoardTracker

# An iteration record as the pipeline writes it to metrics.json (shape of BTPPipeline._iteration's record).
RECORD = {
    "iteration": 1,
    "sample": {
        "candidates": 6,
        "mean_pass_rate": 0.25,
        "p2value": {"count": 6, "mean": 0.4, "std": 0.1, "histogram": [1, 2]},
        "timings": {"sample_busy_s": 3.5, "overlap_ratio": 0.5},
        "tokens_generated": 300,
    },
    "buffer": {"size": 6, "strategy": "power"},
    "train": {
        "adapter": "iter1-abc",
        "tokens_per_second": 75.0,
        "metrics": {"final_loss": 1.25, "first_loss": 2.0},
        "steps": [{"step": 1, "loss": 2.0}],
        "prestarted": True,
    },
    "eval": {
        "greedy_pass_at_1": 0.5,
        "pass_at_k": {"pass@1": 0.5},
        "rsr": 50.0,
        "mean_pass_rate": 0.6,
        "baseline_accuracy": None,
    },
    "phase_s": {"sample": 3.5, "train": 60.0},
    "wall_s": 70.0,
}


def test_iteration_metrics_flattens_the_record_numbers():
    metrics = iteration_metrics(RECORD)
    assert metrics["eval/greedy_pass_at_1"] == 0.5
    assert metrics["eval/pass_at_k/pass@1"] == 0.5
    assert metrics["eval/rsr"] == 50.0
    assert metrics["sample/mean_pass_rate"] == 0.25
    assert metrics["sample/p2value/mean"] == 0.4
    assert metrics["buffer/size"] == 6
    assert metrics["train/metrics/final_loss"] == 1.25
    assert metrics["train/tokens_per_second"] == 75.0
    assert metrics["phase_s/train"] == 60.0
    # lists, strings, booleans, None and the step itself are not metrics
    assert not {k for k in metrics if "steps" in k or "histogram" in k or k.endswith(("adapter", "prestarted"))}
    assert "iteration" not in metrics and "eval/baseline_accuracy" not in metrics


def test_config_flags_select_trackers():
    from btp_ray.cli import build_btp_parser, parse_experiment_args

    _, config = parse_experiment_args(
        build_btp_parser(), ["--tracker", "mlflow,tensorboard", "--tracking-uri", "http://127.0.0.1:5000"]
    )
    assert config.tracking.backends == ("mlflow", "tensorboard")
    assert config.tracking.uri == "http://127.0.0.1:5000"
    _, config = parse_experiment_args(build_btp_parser(), ["--tracker", "none"])
    assert config.tracking.backends == ()
    for bad in (["--tracker", "mlflow,comet"], ["--tracking-uri", "https://user:secret@mlflow.example.com"]):
        with pytest.raises(SystemExit) as exit_info:
            parse_experiment_args(build_btp_parser(), bad)
        assert exit_info.value.code == 2


def _client(store: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=embedded_store(store)[0])


def test_embedded_mlflow_store_holds_params_metrics_and_artifacts(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "report.md").write_text("# report\n")
    adapter = run_dir / "adapters" / "iter_1"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    params = flatten_params({"replay": {"alpha": 0.5, "strategy": "power"}, "name": "btp"})
    tracking = open_tracking(
        TrackingConfig(), experiment="btp-test", run_name="run-1", store_dir=run_dir, state_dir=run_dir, params=params
    )
    tracking.log_metrics(iteration_metrics({"iteration": 0, "eval": {"greedy_pass_at_1": 0.0}}), step=0)
    tracking.log_metrics(iteration_metrics(RECORD), step=1)
    tracking.log_artifact(run_dir / "report.md", "results")
    tracking.log_artifact(run_dir / "missing.png", "plots")  # a file the run did not write is skipped
    tracking.log_artifact(adapter, "adapter")
    tracking.close()
    assert tracking.failed == {}

    client = _client(run_dir)
    (run,) = client.search_runs([client.get_experiment_by_name("btp-test").experiment_id])
    assert run.info.run_name == "run-1" and run.info.status == "FINISHED"
    assert run.data.params == {"replay.alpha": "0.5", "replay.strategy": "power", "name": "btp"}
    history = client.get_metric_history(run.info.run_id, "eval/greedy_pass_at_1")
    assert [(m.step, m.value) for m in history] == [(0, 0.0), (1, 0.5)]
    assert client.get_metric_history(run.info.run_id, "train/metrics/final_loss")[0].value == 1.25
    assert client.get_metric_history(run.info.run_id, "eval/pass_at_k/pass_at_1")[0].value == 0.5
    artifacts = {f.path for f in client.list_artifacts(run.info.run_id, "results")}
    assert artifacts == {"results/report.md"}
    assert {f.path for f in client.list_artifacts(run.info.run_id, "adapter")} == {"adapter/adapter_config.json"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    saved = json.loads((run_dir / "tracking.json").read_text())
    assert saved["mlflow"]["run_id"] == run.info.run_id

    # a resumed run logs into the same MLflow run
    again = open_tracking(
        TrackingConfig(), experiment="btp-test", run_name="run-1", store_dir=run_dir, state_dir=run_dir
    )
    again.log_metrics({"eval/greedy_pass_at_1": 1.0}, step=2)
    again.close()
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/greedy_pass_at_1")] == [0, 1, 2]


def _track_one(backend: str, store: Path, artifact: Path | None = None) -> None:
    """One run on ``backend`` in ``store``: a param, the RECORD at step 1, a greedy pass@1 at step 2, an artifact."""
    tracking = open_tracking(
        TrackingConfig(backends=(backend,)),
        experiment="btp",
        run_name="run-1",
        store_dir=store,
        params={"replay.alpha": 0.5},
    )
    tracking.log_metrics(iteration_metrics(RECORD), step=1)
    tracking.log_metrics({"eval/greedy_pass_at_1": 0.75}, step=2)
    if artifact is not None:
        tracking.log_artifact(artifact, "results")
    tracking.close()
    assert tracking.failed == {}


def test_tensorboard_event_files_read_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _track_one("tensorboard", tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert "eval/greedy_pass_at_1" in events.Tags()["scalars"]
    assert [(e.step, e.value) for e in events.Scalars("eval/greedy_pass_at_1")] == [(1, 0.5), (2, 0.75)]
    assert events.Scalars("buffer/size")[0].value == 6


def test_wandb_offline_run_directory_is_written(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for variable in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(variable, raising=False)
    artifact = tmp_path / "report.md"
    artifact.write_text("# report\n")
    _track_one("wandb", tmp_path, artifact)
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    (records,) = run.glob("run-*.wandb")  # what `wandb sync` uploads later: protobuf records, strings verbatim
    data = records.read_bytes()
    assert b"replay.alpha" in data and b"eval/greedy_pass_at_1" in data and b"train/metrics/final_loss" in data
    assert b"run-1-results" in data  # the artifact


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_tracker_costs_one_warning_and_nothing_else(tmp_path, caplog):
    pytest.importorskip("mlflow")
    uri = f"http://127.0.0.1:{_closed_port()}"
    tracking = Tracking(
        [
            MLflowTracker(experiment="btp", run_dir=tmp_path, uri=uri, request_timeout_s=2),
            TensorBoardTracker(tmp_path / "tb"),
        ],
        run_name="run-1",
        close_timeout_s=60,
    )
    started = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="btp_ray.tracking"):
        for step in range(5):
            tracking.log_metrics({"loss": 1.0 / (step + 1)}, step=step)  # the caller never waits
        queued_s = time.perf_counter() - started
        tracking.close()
    assert queued_s < 0.5
    warnings = [r for r in caplog.records if r.name.startswith("btp_ray.tracking")]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "mlflow failed" in warnings[0].getMessage()
    assert set(tracking.failed) == {"mlflow"} and tracking.active == ["tensorboard"]
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))  # the other backend went on


def test_study_tracking_fixes_one_store_and_experiment_for_every_step(tmp_path):
    from btp_ray.tracking.studies import study_tracking

    suite = study_tracking(TrackingConfig(), tmp_path / "suite_1")
    assert suite.uri == f"sqlite:///{(tmp_path / 'suite_1' / 'mlflow' / 'mlflow.db').resolve()}"
    assert suite.experiment == "suite_1"
    step = study_tracking(suite, tmp_path / "suite_1" / "step3_ablation")  # a step inside the suite keeps both
    assert (step.uri, step.experiment) == (suite.uri, suite.experiment)
    server = study_tracking(TrackingConfig(uri="http://127.0.0.1:5000", experiment="mine"), tmp_path / "x")
    assert (server.uri, server.experiment) == ("http://127.0.0.1:5000", "mine")


def test_tune_callback_of_an_unreachable_tracker_warns_once_and_does_nothing(tmp_path, caplog):
    pytest.importorskip("mlflow")
    from btp_ray.tracking.studies import tune_callbacks

    settings = TrackingConfig(uri=f"http://127.0.0.1:{_closed_port()}", experiment="study", request_timeout_s=2)
    (callback,) = tune_callbacks(settings, tmp_path, "hyperparam")
    with caplog.at_level(logging.WARNING, logger="btp_ray.tracking"):
        callback.setup()
        callback.on_trial_start(iteration=0, trials=[], trial=None)
        callback.on_experiment_end(trials=[])
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("btp_ray.tracking")]
    assert len(warnings) == 1 and "mlflow failed" in warnings[0], warnings
    assert callback.inner is None and callback.error is not None


def test_tracker_that_hangs_holds_up_neither_the_run_nor_its_end_for_long(tmp_path, caplog, monkeypatch):
    """A real listener on 127.0.0.1 that accepts connections and never answers (a wedged tracking server)."""
    pytest.importorskip("mlflow")
    for variable in (
        "MLFLOW_HTTP_REQUEST_TIMEOUT",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    ):
        monkeypatch.delenv(variable, raising=False)
    with socket.create_server(("127.0.0.1", 0), backlog=64) as wedged:
        tracking = Tracking(
            [
                MLflowTracker(
                    experiment="btp",
                    run_dir=tmp_path,
                    uri=f"http://127.0.0.1:{wedged.getsockname()[1]}",
                    request_timeout_s=2,
                )
            ],
            run_name="run-1",
            close_timeout_s=120,
        )
        started = time.perf_counter()
        with caplog.at_level(logging.WARNING, logger="btp_ray.tracking"):
            for step in range(20):
                tracking.log_metrics({"loss": 1.0}, step=step)
            queued_s = time.perf_counter() - started
            tracking.close()
        closed_s = time.perf_counter() - started
    assert queued_s < 0.5
    # the first call times out (2 s, one retry), the tracker is dropped, the 20 queued calls are skipped
    assert closed_s < 30, closed_s
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("btp_ray.tracking")]
    assert len(warnings) == 1 and "mlflow failed" in warnings[0], warnings
    print(f"wedged tracker: caller {queued_s * 1000:.1f} ms for 20 calls, close after {closed_s:.1f} s")


def test_run_outputs_logged_once_and_never_the_trackers_own_files(tmp_path):
    pytest.importorskip("mlflow")
    from btp_ray.tracking import log_run_outputs

    run_dir = tmp_path / "run"
    for name in ("report.md", "candidates.jsonl", "metrics.json", "plots/pass_rates.png", "train/x/plot.png"):
        (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / name).write_text(name)
    (run_dir / "adapters" / "iter_1").mkdir(parents=True)
    (run_dir / "adapters" / "iter_1" / "adapter_config.json").write_text("{}")
    (run_dir / "adapters" / "iter_2").mkdir()  # an iteration that never trained
    for attempt in range(2):  # a resumed run logs its outputs again: the store's own copies are not picked up
        tracking = open_tracking(
            TrackingConfig(), experiment="btp", run_name="run", store_dir=run_dir, state_dir=run_dir
        )
        adapters = [run_dir / "adapters" / "iter_1", run_dir / "adapters" / "iter_2"]
        log_run_outputs(tracking, run_dir, TrackingConfig(), adapters)
        tracking.close()
        assert tracking.failed == {}, attempt
    client = _client(run_dir)
    (run,) = client.search_runs([client.get_experiment_by_name("btp").experiment_id])
    listed = {f.path for path in ("results", "plots", "adapter") for f in client.list_artifacts(run.info.run_id, path)}
    assert listed == {
        "results/report.md",
        "results/candidates.jsonl",
        "results/metrics.json",
        "plots/pass_rates.png",
        "adapter/adapter_config.json",
    }
