"""The executor pool on a local Ray cluster: ordered results, custom resources, and an executor killed mid-batch."""

from __future__ import annotations

import time

import pytest

from btp_ray.data.types import TestCase
from btp_ray.execution import ExecutionJob, ExecutionStatus, ExecutorPool, PoolConfig, SandboxConfig
from btp_ray.execution.pool import executors_for

CONFIG = SandboxConfig(timeout_s=3.0, memory_limit_mb=1024)


def _job(i: int, sleep_s: float = 0.0) -> ExecutionJob:
    program = f"import time\ndef f():\n    time.sleep({sleep_s})\n    return {i}\n"
    return ExecutionJob(program, [TestCase.assertion(f"assert f() == {i}"), TestCase.assertion("assert f() == 3")])


@pytest.fixture(scope="module")
def pool(ray_cluster):
    # Half a CPU each, so the kill test's own pool fits beside this one on the 2-CPU test cluster.
    with ExecutorPool(CONFIG, pool_config=PoolConfig(cpus_per_executor=0.5, num_executors=2)) as executors:
        yield executors


def test_pool_size_follows_cluster_cpus_or_the_custom_resource():
    assert executors_for({"CPU": 2.0}, PoolConfig()) == 2
    assert executors_for({"CPU": 16.0}, PoolConfig(cpus_per_executor=4)) == 4
    assert (
        executors_for({"CPU": 64.0, "sandbox": 6.0}, PoolConfig(resource_name="sandbox", resource_per_executor=2)) == 3
    )
    with pytest.raises(ValueError, match="cpus_per_executor"):
        executors_for({"CPU": 1.0}, PoolConfig(cpus_per_executor=2))


def test_results_come_back_in_input_order(pool):
    jobs = [_job(i) for i in range(40)]
    results = pool.run(jobs)
    assert [r.per_test for r in results] == [(True, i == 3) for i in range(40)]
    assert {info["pid"] for info in pool.executor_info()}.__len__() == 2


def test_submit_returns_one_ref_per_job(pool, ray_cluster):
    refs = pool.submit([_job(i) for i in range(5)])
    assert len(refs) == 5
    results = ray_cluster.get(refs)
    assert [r.status for r in results] == [ExecutionStatus.FAILED] * 3 + [
        ExecutionStatus.PASSED,
        ExecutionStatus.FAILED,
    ]


def test_hostile_job_does_not_break_the_pool(pool):
    hostile = ExecutionJob(
        "import os\nos.kill(os.getppid(), 9)\nwhile True:\n    pass\n", [TestCase.assertion("assert 1")]
    )
    results = pool.run([hostile, _job(3), hostile, _job(3)])
    assert [r.status for r in results] == [ExecutionStatus.TIMEOUT, ExecutionStatus.PASSED] * 2


def test_killed_executor_is_replaced_and_every_job_answered_once(ray_cluster):
    with ExecutorPool(CONFIG, pool_config=PoolConfig(num_executors=2, cpus_per_executor=0.5, max_batch_size=2)) as pool:
        jobs = [_job(i, sleep_s=0.05) for i in range(40)]
        refs = pool.submit(jobs)
        time.sleep(0.5)
        ray_cluster.kill(pool.actors[0], no_restart=False)
        results = ray_cluster.get(refs, timeout=180)
        assert len(results) == 40
        assert [r.per_test[0] for r in results] == [True] * 40
        assert [r.per_test[1] for r in results] == [i == 3 for i in range(40)]


def test_custom_resource_is_required_when_named(ray_cluster):
    with pytest.raises(ValueError, match="no custom resource 'sandbox'"):
        ExecutorPool(CONFIG, pool_config=PoolConfig(resource_name="sandbox"))
    with pytest.raises(ValueError, match="num_executors"):
        PoolConfig(num_executors=0)
