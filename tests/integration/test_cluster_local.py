"""A real Ray cluster on this host, started with the ``ray`` CLI: loopback-only listeners and token auth of the
default local start, sandboxes that cannot reach the GCS or dashboard, and a multi-node simulation where a second
raylet holds the ``sandbox`` resource, the executors land only there, and killing that raylet mid-run loses no result.

The ``local_ray_head`` fixture (module scope) is the one to reuse for ``ray job submit`` tests: it yields a started
:class:`tests.local_cluster.LocalRayCluster`; ``cluster.driver_env()`` is the environment for ``ray job ...`` commands
(with ``--address cluster.dashboard_url``) and for drivers (``RAY_ADDRESS`` is set to the GCS).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from btp_ray.data.types import TestCase
from btp_ray.execution import ExecutionStatus, Sandbox, SandboxConfig
from tests.local_cluster import LocalNode, LocalRayCluster, NodeSpec, listeners_of

REPO_ROOT = Path(__file__).resolve().parents[2]
# Dead raylets are noticed in ~3 s instead of Ray's default ~15 s; the behaviour under test is the same.
FAST_NODE_DEATH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}


@pytest.fixture(scope="module")
def local_ray_head() -> Iterator[LocalRayCluster]:
    """A Ray head on loopback (1 CPU, no ``sandbox`` resource) with its own temp dir, ports and token."""
    with LocalRayCluster(NodeSpec(num_cpus=1), system_env=FAST_NODE_DEATH) as cluster:
        yield cluster


def test_default_local_start_listens_on_loopback_only(local_ray_head):
    listeners = listeners_of(local_ray_head.head.pids())
    processes = {listener.process for listener in listeners}
    assert {"gcs_server", "raylet"} <= processes, processes
    ports = {listener.port for listener in listeners}
    assert local_ray_head.ports.gcs in ports
    assert local_ray_head.ports.dashboard in ports
    public = [listener for listener in listeners if not listener.loopback_only]
    assert public == []


def test_dashboard_refuses_requests_without_the_token(local_ray_head):
    url = local_ray_head.dashboard_url + "/api/version"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=10)
    assert refused.value.code in (401, 403)
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {local_ray_head.token()}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read())["ray_version"].startswith("2.")


def _primary_ip() -> str | None:
    """This host's address on its default route (no packet is sent by a UDP connect)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


def _reachable(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError:
        return False
    return True


def test_sandboxed_program_cannot_reach_gcs_dashboard_or_host_ports(local_ray_head):
    # A listener on every interface stands in for a GCS bound to the node's private address on a real cluster.
    with socket.create_server(("0.0.0.0", 0)) as public_listener:
        targets = [("127.0.0.1", local_ray_head.ports.gcs), ("127.0.0.1", local_ray_head.ports.dashboard)]
        host_ip = _primary_ip()
        if host_ip is not None:
            targets.append((host_ip, public_listener.getsockname()[1]))
        assert all(_reachable(host, port) for host, port in targets), "the targets must be reachable from outside"
        program = (
            "import socket\n"
            "def attempt(host, port):\n"
            "    try:\n"
            "        socket.create_connection((host, port), timeout=2).close()\n"
            "        return 'connected'\n"
            "    except OSError as exc:\n"
            "        return type(exc).__name__\n"
        )
        tests = [TestCase.assertion(f"assert attempt({host!r}, {port}) != 'connected'") for host, port in targets]
        with Sandbox(SandboxConfig(timeout_s=10.0, memory_limit_mb=1024)) as sandbox:
            if "network_namespace" not in sandbox.features:
                pytest.skip(f"this host gives the sandbox no network namespace: {sandbox.missing}")
            result = sandbox.run(program, tests)
    assert result.status is ExecutionStatus.PASSED, result
    assert result.per_test == (True,) * len(targets)


DRIVER = """
import json, os, sys
import ray
from btp_ray.data.types import TestCase
from btp_ray.execution import ExecutionJob, ExecutorPool, PoolConfig, SandboxConfig

def say(**event):
    print(json.dumps(event), flush=True)

ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
count = int(sys.argv[1])
config = SandboxConfig(timeout_s=10.0, memory_limit_mb=1024)
pool = ExecutorPool(config, pool_config=PoolConfig(resource_name="sandbox", cpus_per_executor=0.5, max_batch_size=2))
say(phase="ready", executors=pool.executor_info())
jobs = [
    ExecutionJob(
        f"import time\\ndef f():\\n    time.sleep(0.15)\\n    return {i}\\n",
        [TestCase.assertion(f"assert f() == {i}"), TestCase.assertion("assert f() == 7")],
    )
    for i in range(count)
]
refs = pool.submit(jobs)
pending = list(refs)
while pending:
    done, pending = ray.wait(pending, num_returns=1, timeout=600)
    say(phase="progress", done=count - len(pending))
results = ray.get(refs)
say(phase="done", per_test=[list(r.per_test) for r in results], executors=pool.executor_info())
sys.stdin.readline()  # the test inspects the executors' processes before they are closed
pool.close()
"""


class _Driver:
    """A driver process talking JSON lines on stdout."""

    def __init__(self, script: Path, env: dict[str, str], count: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(script), str(count)],
            env=env,
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []

    def next_event(self, phase: str, until: int | None = None, timeout_s: float = 300.0) -> dict:
        deadline = time.monotonic() + timeout_s
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            if not line.startswith("{"):
                continue
            event = json.loads(line)
            if event["phase"] == phase and (until is None or event["done"] >= until):
                return event
        raise AssertionError(f"driver gave no {phase!r} event; its output:\n{''.join(self.lines[-60:])}")

    def finish(self) -> None:
        """Let the driver close its pool and exit."""
        assert self.process.stdin is not None
        self.process.stdin.write("close\n")
        self.process.stdin.flush()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)


def _pids_of(node: LocalNode) -> set[int]:
    return {process.pid for process in node.processes()}


def test_executors_land_on_sandbox_node_and_survive_its_loss(local_ray_head, tmp_path):
    count = 60
    first = local_ray_head.add_worker(NodeSpec(num_cpus=2, resources={"sandbox": 2}))
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    driver = _Driver(script, local_ray_head.driver_env({"PYTHONPATH": str(REPO_ROOT)}), count)
    replacement: LocalNode | None = None
    try:
        ready = driver.next_event("ready", timeout_s=180)
        executor_pids = {info["pid"] for info in ready["executors"]}
        assert len(executor_pids) == 2  # one executor per unit of `sandbox`
        assert executor_pids <= _pids_of(first)
        assert not executor_pids & _pids_of(local_ray_head.head)

        progress = driver.next_event("progress", until=count // 6)
        assert progress["done"] < count, "the run must still be going when the node dies"
        local_ray_head.kill_worker(first)
        assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in executor_pids)
        replacement = local_ray_head.add_worker(NodeSpec(num_cpus=2, resources={"sandbox": 2}))

        done = driver.next_event("done", timeout_s=300)

        assert len(done["per_test"]) == count
        assert done["per_test"] == [[True, i == 7] for i in range(count)]
        restarted_pids = {info["pid"] for info in done["executors"]}
        assert len(restarted_pids) == 2
        assert restarted_pids <= _pids_of(replacement)
        states = local_ray_head.node_states()
        assert states[first.node_id] == "DEAD"
        assert states[replacement.node_id] == "ALIVE"
        driver.finish()
        assert driver.process.wait(timeout=120) == 0, "".join(driver.lines[-40:])
    finally:
        driver.stop()
        if replacement is not None:
            replacement.stop()
        first.stop()
