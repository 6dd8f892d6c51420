"""Integration test of the replay actor on a local Ray cluster: a killed actor restarts and holds every entry whose
add was acknowledged."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from btp_ray.replay import Experience, ReplayConfig, create_replay_actor


def batch(start: int, count: int) -> list[Experience]:
    return [
        Experience(problem_id=f"P/{i % 5}", code=f"return {i}", per_test=(True, i % 3 == 0),
                   mean_token_logprob=-0.02 * (i % 40), token_count=8)
        for i in range(start, start + count)
    ]  # fmt: skip


@pytest.mark.parametrize("checkpoint_every", [1, 4])
def test_killed_actor_restarts_with_every_acknowledged_entry(
    ray_cluster, tmp_path: Path, checkpoint_every: int
) -> None:
    ray = ray_cluster
    config = ReplayConfig(capacity=10_000, strategy="power", checkpoint_every=checkpoint_every, seed=3)
    name = f"replay-kill-{checkpoint_every}"
    actor = create_replay_actor(config, name, tmp_path / "ckpt", namespace="btp-tests")
    acknowledged: dict[int, str] = {}
    for step in range(5):
        result = ray.get(actor.add.remote(batch(20 * step, 20)))
        acknowledged.update(zip(result.ids, (record.code for record in batch(20 * step, 20)), strict=True))
    ids, _ = ray.get(actor.sample.remote(10, False))
    ray.get(actor.update.remote(ids, [(True, True)] * 10))
    before = ray.get(actor.stats.remote())
    pid_before = ray.get(actor.__ray_call__.remote(lambda _self: os.getpid()))

    ray.kill(actor, no_restart=False)
    deadline = time.monotonic() + 60
    while True:  # the kill is asynchronous: wait until a new process answers
        try:
            pid = ray.get(actor.__ray_call__.remote(lambda _self: os.getpid()), timeout=30)
        except ray.exceptions.RayActorError:
            pid = pid_before
        if pid != pid_before:
            break
        assert time.monotonic() < deadline, "the killed replay actor did not come back within 60 s"
        time.sleep(0.5)
    size = ray.get(actor.size.remote())

    assert size == len(acknowledged) == 100
    stored = ray.get(actor.get.remote(list(acknowledged)))
    assert [record.code for record in stored] == list(acknowledged.values())
    assert all(record.pass_rate == 1.0 for record in ray.get(actor.get.remote(ids)))
    assert ray.get(actor.stats.remote()) == before
    same = create_replay_actor(config, name, tmp_path / "ckpt", namespace="btp-tests")  # get_if_exists
    assert ray.get(same.size.remote()) == 100
    with pytest.raises(ValueError, match="without replacement"):
        ray.get(actor.sample.remote(1000, False))
    ray.kill(actor, no_restart=True)
