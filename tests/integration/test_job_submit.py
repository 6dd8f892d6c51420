"""``ray job submit -- python jobs/btp.py`` against a real Ray head on loopback (started with the ``ray`` CLI, token
auth on): the job succeeds, its progress is readable from ``ray job logs``, its run directory is complete, and the
custom metrics it recorded are exported by the node's metrics agent."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from btp_ray.pipeline.progress import RunMetrics
from tests.local_cluster import LocalRayCluster, NodeSpec

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")
JOB_ARGS = [
    "--mode", "btp_only", "--max-problems", "2", "--num-beams", "2", "--max-new-tokens", "24",
    "--set", "problem_batch_size=1",
]  # fmt: skip


@pytest.fixture(scope="module")
def head() -> Iterator[LocalRayCluster]:
    with LocalRayCluster(NodeSpec(num_cpus=2)) as cluster:
        yield cluster


def ray_cli(head: LocalRayCluster, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RAY, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=head.driver_env()
    )


def test_submitted_btp_job_succeeds_with_logs_and_metrics(head: LocalRayCluster, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    job_id = f"btp-test-{uuid.uuid4().hex[:8]}"
    submit = ray_cli(
        head, "job", "submit", "--address", head.dashboard_url, "--submission-id", job_id, "--no-wait",
        "--runtime-env", "cluster/runtime_env.yaml", "--",
        "python", "jobs/btp.py", *JOB_ARGS, "--output-dir", str(run_dir),
    )  # fmt: skip
    assert submit.returncode == 0, submit.stderr[-3000:]
    deadline = time.monotonic() + 600
    status = ""
    while time.monotonic() < deadline:
        status = ray_cli(head, "job", "status", "--address", head.dashboard_url, job_id).stdout.lower()
        if any(f"job '{job_id}' {word}" in status for word in ("succeeded", "failed", "stopped")):
            break
        time.sleep(3)
    logs = ray_cli(head, "job", "logs", "--address", head.dashboard_url, job_id).stdout
    assert f"job '{job_id}' succeeded" in status, f"{status}\n{logs[-4000:]}"
    # progress is readable from the job's logs: the per-phase bars and the per-iteration line
    assert "iter 1 sample" in logs and "iter   1 |" in logs and "BTP run finished" in logs
    results = json.loads((run_dir / "btp_results.json").read_text())
    assert results["mode"] == "btp_only" and results["iterations"][-1]["sample"]["candidates"] == 2
    # the custom metrics reach the node's Prometheus endpoint
    node = json.loads(
        subprocess.run(
            [sys.executable, "-c", "import json, ray; ray.init(); print(json.dumps(ray.nodes()))"],
            capture_output=True, text=True, timeout=120, env=head.driver_env(), check=True,
        ).stdout.strip().splitlines()[-1]
    )[0]  # fmt: skip
    url = f"http://127.0.0.1:{node['MetricsExportPort']}/metrics"
    exported = ""
    for _ in range(20):  # the agent exports on an interval
        exported = urllib.request.urlopen(url, timeout=10).read().decode()
        if "btp_candidates_total" in exported:
            break
        time.sleep(3)
    for name in ("btp_candidates_total", "btp_buffer_size", "btp_mean_pass_rate"):
        assert name in exported, f"{name} not exported; metrics named btp: " + str(
            sorted({line.split("{")[0] for line in exported.splitlines() if "btp_" in line})
        )
    assert set(RunMetrics.NAMES) >= {"btp_candidates_total", "btp_buffer_size", "btp_mean_pass_rate"}
