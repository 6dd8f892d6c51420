"""The learner's Ray Train storage is the run directory: a BTP pipeline points ``RunConfig(storage_path=…)`` at
``<run>/train`` unless ``training.storage_path`` says otherwise, so on a cluster (whose YAMLs put the run directory on
a shared volume) the driver finds the adapter a worker on another node wrote. The two-node test runs a real local
cluster (a head with no CPU for workers, a second raylet with two) and a driver process that trains one iteration
through the pipeline's learner."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from btp_ray.experiment_config import build_experiment_config
from btp_ray.pipeline.run_dir import RunDirectory
from btp_ray.pipeline.runner import BTPPipeline
from btp_ray.training.tiny_model import make_tiny_llama
from tests.local_cluster import LocalRayCluster, NodeSpec

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def _pipeline(tiny_model: Path, run_path: Path, **training) -> BTPPipeline:
    config = build_experiment_config({"sampling": {"model": str(tiny_model)}, "training": training})
    return BTPPipeline(config, RunDirectory.create(run_path, config))


def test_pipeline_learner_stores_in_the_run_directory(tiny_model, tmp_path):
    learner = _pipeline(tiny_model, tmp_path / "run")._learner()
    assert learner.config.storage_path == str((tmp_path / "run" / "train").resolve())
    chosen = _pipeline(tiny_model, tmp_path / "other", storage_path="s3://bucket/btp")._learner()
    assert chosen.config.storage_path == "s3://bucket/btp"  # an explicit storage path wins


DRIVER = """
import json, os, sys
from pathlib import Path
import ray
from ray.util.state import list_actors
from btp_ray.experiment_config import build_experiment_config
from btp_ray.pipeline.run_dir import RunDirectory
from btp_ray.pipeline.runner import BTPPipeline
from tests.learner_data import EXAMPLES

model, run_path = sys.argv[1], Path(sys.argv[2])
ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
training = {"max_steps": 2, "per_device_batch_size": 2, "max_seq_len": 128, "lora_r": 8, "lora_alpha": 16}
config = build_experiment_config({"sampling": {"model": model}, "training": training})
run = RunDirectory.create(run_path, config)
learner = BTPPipeline(config, run)._learner()
result = learner.train(EXAMPLES, iteration=1, output_dir=run.adapter_dir(1), run_name="two-node-storage")
workers = list_actors(filters=[("class_name", "=", "RayTrainWorker")], detail=True, raise_on_missing_output=False)
print("RESULT " + json.dumps({
    "driver_node": ray.get_runtime_context().get_node_id(),
    "worker_nodes": sorted({w.node_id for w in workers}),
    "storage_path": learner.config.storage_path,
    "adapter_dir": str(result.adapter_dir),
    "final_loss": result.final_loss,
}), flush=True)
"""


@pytest.mark.slow
def test_adapter_from_a_worker_on_another_node_reaches_the_driver(tiny_model, tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    run_path = tmp_path / "shared" / "run"
    with LocalRayCluster(NodeSpec(num_cpus=0)) as cluster:  # the head runs the driver, never a training worker
        worker = cluster.add_worker(NodeSpec(num_cpus=2))
        done = subprocess.run(
            [sys.executable, str(script), str(tiny_model), str(run_path)],
            env=cluster.driver_env({"PYTHONPATH": str(REPO)}),
            cwd=REPO, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        (line,) = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        result = json.loads(line.removeprefix("RESULT "))
        assert result["worker_nodes"] == [worker.node_id] != [cluster.head.node_id]
        assert result["driver_node"] == cluster.head.node_id
    storage = (run_path / "train").resolve()
    assert result["storage_path"] == str(storage)
    checkpoints = list(storage.glob("two-node-storage/iteration-0001/adapter_config.json"))
    assert len(checkpoints) == 1, sorted(str(p) for p in storage.rglob("*"))[:40]
    adapter = Path(result["adapter_dir"])
    assert adapter == run_path / "adapters" / "iter_1"
    assert {"adapter_config.json", "adapter_model.safetensors", "manifest.json"} <= {p.name for p in adapter.iterdir()}
    manifest = json.loads((adapter / "manifest.json").read_text())
    assert manifest["iteration"] == 1 and manifest["world_size"] == 1
