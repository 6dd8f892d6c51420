"""Sampler engines placed across a real multi-node Ray cluster on this host: two worker raylets each offer four units
of a custom ``fake_gpu`` resource standing in for GPUs (no CUDA GPU exists here); the test asserts the node every
bundle of every engine's placement group lands on, that learner GPUs stay free of engines, and that a
:class:`SamplerPool` built on the placement runs each engine's actor on its engine's node."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.local_cluster import LocalRayCluster, NodeSpec

REPO_ROOT = Path(__file__).resolve().parents[2]

DRIVER = r"""
import json, os, sys
import ray
from btp_ray.sampling.placement import EnginePlacement, EnginePlacementConfig

ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
mode, engines, tp, learner_gpus = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
config = EnginePlacementConfig(num_engines=engines, tensor_parallel_size=tp, accelerator="fake_gpu",
                               learner=mode, learner_gpus=learner_gpus, cpus_per_bundle=0.5)
placement = EnginePlacement(config)
out = {"engine_nodes": placement.assignment.engine_nodes, "learner_nodes": placement.assignment.learner_nodes,
       "bundle_nodes": placement.bundle_nodes(), "learner_selector": placement.learner_label_selector()}
if len(sys.argv) > 5:
    from btp_ray.sampling.config import SamplerConfig
    from btp_ray.sampling.pool import SamplerPool, SamplerPoolConfig
    from btp_ray.training.tiny_model import make_tiny_llama

    model = make_tiny_llama(sys.argv[5])
    pool = SamplerPool(SamplerConfig(model=str(model), backend="hf", device="cpu"),
                       SamplerPoolConfig(num_cpus_per_actor=0.5), placement=placement)
    out["actor_nodes"] = ray.get([actor.node_id.remote() for actor in pool.actors])
    pool.close()
placement.remove()
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def gpu_standin_cluster() -> Iterator[tuple[LocalRayCluster, list[str]]]:
    """A head without accelerators and two workers with 4 ``fake_gpu`` each; yields the workers' node ids."""
    with LocalRayCluster(NodeSpec(num_cpus=1)) as cluster:
        nodes = [cluster.add_worker(NodeSpec(num_cpus=4, resources={"fake_gpu": 4})) for _ in range(2)]
        yield cluster, [node.node_id for node in nodes]


def _drive(cluster: LocalRayCluster, *args: str) -> dict:
    env = cluster.driver_env({"PYTHONPATH": str(REPO_ROOT)})
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT ") :])


def test_split_engines_pack_on_one_node_each_and_spread_and_the_learner_keeps_its_node(gpu_standin_cluster):
    cluster, (first, second) = gpu_standin_cluster
    ordered = sorted([first, second])  # the placement orders nodes by id
    out = _drive(cluster, "split", "3", "2", "2")
    # The learner's two GPUs come from the last node; engines go round-robin: node 0, node 1, node 0.
    assert out["learner_nodes"] == [ordered[1]] * 2
    assert out["learner_selector"] == [{"ray.io/node-id": ordered[1]}] * 2
    assert out["engine_nodes"] == [ordered[0], ordered[1], ordered[0]]
    for engine_node, bundles in zip(out["engine_nodes"], out["bundle_nodes"], strict=True):
        assert bundles == [engine_node, engine_node]  # STRICT_PACK on the chosen node


@pytest.mark.slow  # starts two sampler actors that each import torch and load a model (~3 min on 2 loaded cores)
def test_colocated_engines_share_gpus_and_pool_actors_run_on_their_engines_node(gpu_standin_cluster, tmp_path):
    cluster, nodes = gpu_standin_cluster
    ordered = sorted(nodes)
    out = _drive(cluster, "colocate", "2", "1", "0", str(tmp_path / "tiny"))
    assert out["engine_nodes"] == ordered and out["learner_selector"] is None
    assert out["bundle_nodes"] == [[ordered[0]], [ordered[1]]]
    assert out["actor_nodes"] == ordered
