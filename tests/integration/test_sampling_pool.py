"""SamplerPool on a local Ray cluster (2 CPUs): HF samplers on a tiny random-weight Llama in CPU actors; results in
input order and equal to a local sampler's, a killed actor's shard retried, adapters broadcast and re-applied after
a restart."""

from __future__ import annotations

import os
import signal

import pytest

from btp_ray.data import load_problems
from btp_ray.models import embedded_model_dir
from btp_ray.sampling import GenerationParams, HFSampler, SamplerConfig, SamplerPool
from btp_ray.sampling.pool import SamplerPoolConfig
from btp_ray.sampling.random_model import build_random_llama

PARAMS = GenerationParams(strategy="beam", num_candidates=2, max_new_tokens=6, prompt_format="raw")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_random_llama(tmp_path_factory.mktemp("tiny-llama"), embedded_model_dir())


@pytest.fixture(scope="module")
def adapter_dir(tiny_model, tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    target = tmp_path_factory.mktemp("adapter")
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), lora).save_pretrained(target)
    return target


def _tokens(results):
    return [[c.token_ids for c in candidates] for candidates in results]


def test_pool_shards_in_order_survives_a_killed_actor_and_broadcasts_adapters(ray_cluster, tiny_model, adapter_dir):
    config = SamplerConfig(model=str(tiny_model), backend="hf", device="cpu")
    problems = load_problems("humaneval", limit=5)
    local = HFSampler(config)
    expected = local.generate(problems, PARAMS)

    with SamplerPool(config, SamplerPoolConfig(num_actors=2, num_cpus_per_actor=0.5, max_restarts=2)) as pool:
        results = pool.generate(problems, PARAMS)
        assert [cs[0].task_id for cs in results] == [p.task_id for p in problems]
        assert _tokens(results) == _tokens(expected)

        identities = pool.load_adapter(str(adapter_dir), "round-1")
        assert [i.adapter for i in identities] == ["round-1", "round-1"]
        local.load_adapter(str(adapter_dir), "round-1")
        expected_adapted = local.generate(problems, PARAMS)
        assert _tokens(expected_adapted) != _tokens(expected)

        import ray

        old_pid = ray.get(pool.actors[0].pid.remote())
        os.kill(old_pid, signal.SIGKILL)
        # The dead actor restarts from its constructor (base model only); the pool names the adapter on every call.
        adapted = pool.generate(problems, PARAMS)
        assert ray.get(pool.actors[0].pid.remote()) != old_pid
        assert _tokens(adapted) == _tokens(expected_adapted)
        assert all(c.sampler.adapter == "round-1" for cs in adapted for c in cs)


def test_pool_config_rejects_zero_actors():
    with pytest.raises(ValueError, match="num_actors"):
        SamplerPoolConfig(num_actors=0)
