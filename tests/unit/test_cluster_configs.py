"""The cluster configs in ``cluster/`` validate against Ray's own cluster-config schema and keep their safety and
placement promises; the KubeRay manifests and the runtime env parse; the local-cluster command lines are loopback-only.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.runtime_env import RuntimeEnv

from tests.local_cluster import (
    LOOPBACK,
    WORKER_LOOPBACK,
    HeadPorts,
    Listener,
    NodeSpec,
    free_ports,
    head_command,
    node_environment,
    worker_command,
)

CLUSTER_DIR = Path(__file__).resolve().parents[2] / "cluster"
LAUNCHER_CONFIGS = ("aws.yaml", "gcp.yaml", "local.yaml")
CLOUD_CONFIGS = ("aws.yaml", "gcp.yaml")


def _load(name: str) -> dict:
    return yaml.safe_load((CLUSTER_DIR / name).read_text())


def _start_commands(config: dict) -> tuple[str, str]:
    return " ".join(config["head_start_ray_commands"]), " ".join(config["worker_start_ray_commands"])


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_config_validates_against_rays_schema(name):
    config = _load(name)
    validate_config(config)  # the file as written
    validate_config(prepare_config(config))  # and after Ray merges its provider defaults, as `ray up` does


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_dashboard_is_private_and_token_auth_is_on(name):
    config = _load(name)
    head, worker = _start_commands(config)
    assert "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in json.dumps(config), "nothing in the config binds or opens to every address"
    for command in (head, worker):
        assert "RAY_AUTH_MODE=token" in command
        assert "RAY_AUTH_TOKEN_PATH=$HOME/.ray/auth_token" in command
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_aws_security_group_opens_no_ray_port_to_the_world():
    rules = _load("aws.yaml")["provider"]["security_group"]["IpPermissions"]
    for rule in rules:
        world = any(r["CidrIp"] == "0.0.0.0/0" for r in rule.get("IpRanges", ()))
        assert not world, rule
        assert (rule["FromPort"], rule["ToPort"]) == (22, 22), "only SSH is opened, and only to the admin range"


@pytest.mark.parametrize("name", CLOUD_CONFIGS)
def test_node_types_place_gpu_work_and_sandboxes_apart(name):
    config = _load(name)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}, "the head runs the driver only: no actors, no GPU"
    gpu_types = {n: t for n, t in types.items() if t["resources"].get("GPU", 0) > 0}
    sandbox_types = {n: t for n, t in types.items() if t["resources"].get("sandbox", 0) > 0}
    assert len(gpu_types) >= 2 and len(sandbox_types) == 1
    assert not set(gpu_types) & set(sandbox_types)
    for node_type in types.values():
        if node_type is not head:
            assert 0 <= node_type["min_workers"] <= node_type["max_workers"]
    assert sum(t.get("min_workers", 0) for t in types.values()) <= config["max_workers"]
    (sandbox,) = sandbox_types.values()
    assert sandbox["resources"]["sandbox"] == sandbox["resources"]["CPU"]
    assert sandbox["min_workers"] >= 1, "executors need at least one sandbox node to be schedulable at all"
    assert "--cap-add=SYS_ADMIN" in sandbox["docker"]["worker_run_options"]
    assert sandbox["worker_setup_commands"] == ['pip install -e "$HOME/btp-ray"']
    assert config["setup_commands"] == ['pip install -e "$HOME/btp-ray[gpu]"']
    assert config["file_mounts"]["~/btp-ray"] == "."


def _run_local_worker_start(tmp_path: Path, has_gpu: bool) -> list[str]:
    """Run local.yaml's worker start command with stand-ins for `nvidia-smi` (no GPU here) and `ray` (so that no
    cluster starts): the stand-in `ray` prints its arguments, one per line."""
    bin_dir = tmp_path / ("gpu" if has_gpu else "cpu")
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\nexit {0 if has_gpu else 1}\n")
    (bin_dir / "ray").write_text('#!/bin/sh\nfor arg in "$@"; do echo "$arg"; done\n')
    (bin_dir / "nproc").write_text("#!/bin/sh\necho 24\n")
    for tool in bin_dir.iterdir():
        tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    command = _load("local.yaml")["worker_start_ray_commands"][-1].replace("$HOME/btp-venv/bin:", "")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RAY_HEAD_IP": "10.0.0.10", "HOME": str(tmp_path)}
    out = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, check=True).stdout
    return out.splitlines()


@pytest.mark.parametrize(("has_gpu", "expected"), [(False, {"sandbox": 24}), (True, {})])
def test_local_workers_take_the_sandbox_role_only_without_gpus(tmp_path, has_gpu, expected):
    args = _run_local_worker_start(tmp_path, has_gpu)
    assert args[:2] == ["start", "--address=10.0.0.10:6379"]
    (resources,) = [a.split("=", 1)[1] for a in args if a.startswith("--resources=")]
    assert json.loads(resources) == expected


def _kuberay(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((CLUSTER_DIR / name).read_text()) if doc]


def _cluster_spec(name: str) -> dict:
    (doc,) = [d for d in _kuberay(name) if d["kind"] in ("RayCluster", "RayJob")]
    return doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]


def _container(group: dict) -> dict:
    (container,) = group["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("name", ["kuberay.yaml", "kuberay-job.yaml"])
def test_kuberay_manifest_names_images_resources_and_auth(name):
    kinds = {doc["kind"] for doc in _kuberay(name)}
    assert kinds & {"RayCluster", "RayJob"}
    for doc in _kuberay(name):
        assert doc["apiVersion"] in ("ray.io/v1", "v1", "networking.k8s.io/v1")
    spec = _cluster_spec(name)
    assert spec["rayVersion"] == "2.60.0"
    assert spec["authOptions"] == {"mode": "token"}
    head = spec["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP"
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert "nvidia.com/gpu" not in _container(head)["resources"]["limits"]
    groups = {group["groupName"]: group for group in spec["workerGroupSpecs"]}
    assert set(groups) == {"gpu", "sandbox"}
    for group in groups.values():
        assert _container(group)["image"] == _container(head)["image"] == "your-registry/btp-ray:0.1.0-gpu"
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    gpu_limits = _container(groups["gpu"])["resources"]["limits"]
    assert int(gpu_limits["nvidia.com/gpu"]) >= 1
    assert "resources" not in groups["gpu"]["rayStartParams"]
    sandbox = groups["sandbox"]
    assert "nvidia.com/gpu" not in _container(sandbox)["resources"]["limits"]
    # KubeRay passes the value to `ray start --resources` as written: a quoted JSON string.
    resources = json.loads(json.loads(sandbox["rayStartParams"]["resources"]))
    assert resources == {"sandbox": int(_container(sandbox)["resources"]["limits"]["cpu"])}
    assert _container(sandbox)["securityContext"]["capabilities"]["add"] == ["SYS_ADMIN"]


def test_kuberay_head_ports_admit_only_the_clusters_pods():
    (policy,) = [doc for doc in _kuberay("kuberay.yaml") if doc["kind"] == "NetworkPolicy"]
    assert policy["spec"]["podSelector"]["matchLabels"]["ray.io/node-type"] == "head"
    ports = {rule["port"] for rule in policy["spec"]["ingress"][0]["ports"]}
    assert {6379, 8265} <= ports
    for source in policy["spec"]["ingress"][0]["from"]:
        assert "ipBlock" not in source


def test_kuberay_job_runs_btp_with_executors_on_sandbox_nodes():
    (job,) = _kuberay("kuberay-job.yaml")
    assert job["kind"] == "RayJob"
    entrypoint = job["spec"]["entrypoint"]
    assert entrypoint.startswith("python /home/ray/btp-ray/jobs/btp.py")
    assert "--set resources.executor_resource=sandbox" in entrypoint
    assert "/mnt/runs/" in entrypoint, "the run directory must be on the shared volume for --resume"


def test_runtime_env_is_accepted_by_ray():
    data = _load("runtime_env.yaml")
    runtime_env = RuntimeEnv(**data)
    assert runtime_env["working_dir"] == "."
    assert {".git", ".venv", "results"} <= set(runtime_env["excludes"])
    assert runtime_env["env_vars"]["PYTHONUNBUFFERED"] == "1"


# ------------------------------------------------------------------------------- tests.local_cluster, no Ray
def test_node_spec_validates_and_renders_resource_flags():
    flags = NodeSpec(num_cpus=2, resources={"sandbox": 2}).resource_flags()
    assert flags[flags.index("--num-cpus") + 1] == "2"
    assert json.loads(flags[flags.index("--resources") + 1]) == {"sandbox": 2.0}
    assert "--resources" not in NodeSpec().resource_flags()
    with pytest.raises(ValueError, match="num_gpus"):
        NodeSpec(resources={"GPU": 1})
    with pytest.raises(ValueError, match=r"resources\['sandbox'\]"):
        NodeSpec(resources={"sandbox": 0})
    with pytest.raises(ValueError, match="num_cpus"):
        NodeSpec(num_cpus=-1)


def test_head_command_binds_the_dashboard_and_node_to_loopback(tmp_path):
    ports = HeadPorts(*free_ports(4))
    command = head_command(NodeSpec(num_cpus=1), ports, tmp_path)
    assert command[:4] == ["ray", "start", "--head", "--block"]
    assert command[command.index("--dashboard-host") + 1] == LOOPBACK
    assert command[command.index("--node-ip-address") + 1] == LOOPBACK
    assert command[command.index("--port") + 1] == str(ports.gcs)
    assert command[command.index("--temp-dir") + 1] == str(tmp_path)
    worker = worker_command(NodeSpec(resources={"sandbox": 1}), ports.gcs, 40000, tmp_path)
    assert worker[worker.index("--address") + 1] == f"[{WORKER_LOOPBACK}]:{ports.gcs}"
    with pytest.raises(ValueError, match="distinct"):
        HeadPorts(7000, 7000, 7001, 7002)


def test_node_environment_forces_token_auth_and_the_interpreters_path(tmp_path):
    base = {"PATH": "/usr/bin", "RAY_AUTH_TOKEN": "leaked", "RAY_ADDRESS": "elsewhere:6379"}
    head = node_environment(base, tmp_path / "token", head=True, python="/venv/bin/python")
    assert head["PATH"].split(os.pathsep)[0] == "/venv/bin"
    assert head["RAY_AUTH_MODE"] == "token"
    assert head["RAY_AUTH_TOKEN_PATH"] == str(tmp_path / "token")
    assert "RAY_AUTH_TOKEN" not in head and "RAY_ADDRESS" not in head
    assert head["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    worker = node_environment(base, tmp_path / "token", head=False)
    assert worker["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "1"


@pytest.mark.parametrize(
    ("ip", "loopback"),
    [
        ("127.0.0.1", True),
        ("::ffff:127.0.0.1", True),
        ("::1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("::ffff:10.0.0.5", False),
    ],
)
def test_listener_loopback_classification(ip, loopback):
    assert Listener(1, "gcs_server", ip, 6379).loopback_only is loopback


def test_free_ports_are_distinct():
    ports = free_ports(8)
    assert len(set(ports)) == 8
