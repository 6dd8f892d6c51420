"""Tracking a real BTP run (``jobs/btp.py`` as a subprocess, a tiny random Llama, the real sandbox, replay buffer and
Ray Train LoRA) into a real MLflow tracking server on 127.0.0.1, read back through MLflow's client; then the same
with the server stopped mid-run: the run completes with its results intact and says so in one warning."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("mlflow")

from btp_ray.training.tiny_model import make_tiny_llama

REPO = Path(__file__).resolve().parents[2]
SMALL = [
    "--max-problems", "3", "--num-beams", "2", "--max-new-tokens", "24", "--batch-size", "4",
    "--set", "problem_batch_size=1", "--set", "eval_fraction=0.34", "--set", "training.max_steps=1",
    "--set", "training.max_seq_len=256", "--set", "training.per_device_batch_size=2",
]  # fmt: skip
TRACKING_WARNING = "tracking: mlflow failed"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with a SQLite store and proxied artifacts in ``root``."""

    def __init__(self, root: Path) -> None:
        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = open(root / "server.log", "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
             "--artifacts-destination", str(root / "artifacts"), "--workers", "1"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
            assert self.process.poll() is None, (root / "server.log").read_text()[-3000:]
        raise AssertionError("mlflow server did not answer /health in 120 s")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:  # its web workers can be slow to stop on a loaded machine
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        self.log.close()


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[MlflowServer]:
    root = tmp_path / "mlflow-server"
    root.mkdir()
    server = MlflowServer(root)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def _job(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, str(REPO / "jobs" / "btp.py"), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env,
    )  # fmt: skip


def _check_complete(run: Path, iterations: int) -> dict:
    results = json.loads((run / "btp_results.json").read_text())
    assert [h["iteration"] for h in results["iterations"]] == list(range(iterations + 1))
    assert all("eval" in h for h in results["iterations"])
    for i in range(1, iterations + 1):
        assert (run / "adapters" / f"iter_{i}" / "adapter_config.json").is_file()
    assert (run / "report.md").is_file() and (run / "candidates.jsonl").stat().st_size > 0
    json.loads((run / "state.json").read_text())["finished"] is True  # noqa: B015
    return results


@pytest.mark.slow
def test_mlflow_server_receives_params_metrics_and_artifacts(mlflow_server, tiny_model, tmp_path):
    from mlflow import MlflowClient

    run = tmp_path / "run"
    job = _job("--source-model", str(tiny_model), *SMALL, "--n-iterations", "1", "--output-dir", str(run),
               "--tracking-uri", mlflow_server.uri, "--set", "tracking.experiment=btp-tracking-test")  # fmt: skip
    _, err = job.communicate(timeout=900)
    assert job.returncode == 0, err[-4000:]
    assert TRACKING_WARNING not in err
    results = _check_complete(run, 1)

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    experiment = client.get_experiment_by_name("btp-tracking-test")
    (tracked,) = client.search_runs([experiment.experiment_id])
    assert tracked.info.run_name == run.name and tracked.info.status == "FINISHED"
    params = tracked.data.params
    assert params["replay.alpha"] == "0.5" and params["training.base_model"] == str(tiny_model)
    assert params["generation.num_candidates"] == "2" and params["tracking.uri"] == mlflow_server.uri
    run_id = tracked.info.run_id
    greedy = client.get_metric_history(run_id, "eval/greedy_pass_at_1")
    assert [(m.step, m.value) for m in greedy] == [
        (h["iteration"], h["eval"]["greedy_pass_at_1"]) for h in results["iterations"]
    ]
    (loss,) = client.get_metric_history(run_id, "train/metrics/final_loss")
    assert loss.step == 1 and loss.value == pytest.approx(results["iterations"][1]["train"]["metrics"]["final_loss"])
    for key in ("sample/mean_pass_rate", "sample/p2value/mean", "buffer/size", "train/tokens_per_second",
                "phase_s/train", "phase_s/sample", "eval/mean_pass_rate"):  # fmt: skip
        assert client.get_metric_history(run_id, key), key
    artifacts = {f.path for f in client.list_artifacts(run_id, "results")}
    assert {"results/report.md", "results/candidates.jsonl", "results/btp_results.json"} <= artifacts
    adapter = {f.path for f in client.list_artifacts(run_id, "adapter")}
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= adapter
    downloaded = Path(client.download_artifacts(run_id, "results/candidates.jsonl", str(tmp_path)))
    assert downloaded.read_bytes() == (run / "candidates.jsonl").read_bytes()


@pytest.mark.slow
def test_server_stopped_mid_run_costs_one_warning(mlflow_server, tiny_model, tmp_path):
    from mlflow import MlflowClient

    run = tmp_path / "run"
    job = _job("--source-model", str(tiny_model), *SMALL, "--n-iterations", "2", "--output-dir", str(run),
               "--tracking-uri", mlflow_server.uri)  # fmt: skip
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    deadline = time.monotonic() + 600
    baseline_logged = False
    while time.monotonic() < deadline and job.poll() is None and not baseline_logged:
        experiment = client.get_experiment_by_name("btp")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        baseline_logged = bool(runs and runs[0].data.metrics.get("eval/greedy_pass_at_1") is not None)
        time.sleep(1)
    assert baseline_logged, "the run never logged its baseline evaluation"
    state = json.loads((run / "state.json").read_text())
    assert "2" not in state["completed"], "the server must stop while the run still has iterations to go"
    mlflow_server.stop()
    stopped_at = time.monotonic()

    _, err = job.communicate(timeout=900)
    assert job.returncode == 0, err[-4000:]
    _check_complete(run, 2)
    assert err.count(TRACKING_WARNING) == 1, [line for line in err.splitlines() if "tracking" in line]
    assert "WARNING" in next(line for line in err.splitlines() if TRACKING_WARNING in line)
    print(f"run finished {time.monotonic() - stopped_at:.0f} s after the server stopped")


@pytest.mark.slow
def test_default_run_tracks_into_the_embedded_store_without_a_server(tiny_model, tmp_path):
    """No tracking flag at all: the run is tracked in ``<run>/mlflow/`` and ``mlflow ui`` on that store shows it."""
    from mlflow import MlflowClient

    run = tmp_path / "run"
    job = _job("--mode", "btp_only", "--source-model", str(tiny_model), *SMALL, "--n-iterations", "1",
               "--output-dir", str(run))  # fmt: skip
    _, err = job.communicate(timeout=900)
    assert job.returncode == 0, err[-4000:]
    assert "tracking:" not in err
    results = json.loads((run / "btp_results.json").read_text())
    client = MlflowClient(tracking_uri=f"sqlite:///{(run / 'mlflow' / 'mlflow.db').resolve()}")
    (tracked,) = client.search_runs([client.get_experiment_by_name("btp").experiment_id])
    assert tracked.info.run_name == run.name and tracked.info.status == "FINISHED"
    assert tracked.data.params["mode"] == "btp_only"
    history = client.get_metric_history(tracked.info.run_id, "sample/candidates")
    assert [(m.step, m.value) for m in history] == [(1, results["iterations"][1]["sample"]["candidates"])]
    assert client.get_metric_history(tracked.info.run_id, "eval/greedy_pass_at_1")[0].step == 0
    artifacts = {f.path for f in client.list_artifacts(tracked.info.run_id, "results")}
    assert {"results/report.md", "results/candidates.jsonl"} <= artifacts
    assert list((run / "mlflow" / "artifacts").rglob("candidates.jsonl"))  # the artifacts live in the run directory
