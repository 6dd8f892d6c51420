"""HFSampler on a CUDA GPU (skipped without one): bf16 beam search on a random-weight Llama, with the candidates'
log-probs checked against a float32 teacher-forced re-scoring on the same GPU, and a Ray SamplerPool actor that
reserves the GPU and runs its model there."""

from __future__ import annotations

import pytest

from btp_ray.data.types import Problem, TestCase

pytestmark = pytest.mark.gpu

PROMPTS = [
    ("gpu/0", 'def add(a, b):\n    """Return a + b."""\n', "add"),
    ("gpu/1", 'def neg(x):\n    """Return -x."""\n', "neg"),
    ("gpu/2", 'def sq(x):\n    """Return x squared."""\n', "sq"),
]


def _problems() -> list[Problem]:
    return [Problem(t, p, (TestCase.assertion("assert True"),), entry_point=e) for t, p, e in PROMPTS]


def test_bf16_beam_search_on_gpu_matches_float32_teacher_forcing(gpu_llama):
    import torch
    from transformers import AutoModelForCausalLM

    from btp_ray.sampling import GenerationParams, SamplerConfig
    from btp_ray.sampling.hf import HFSampler, teacher_forced_logprobs

    sampler = HFSampler(SamplerConfig(model=str(gpu_llama), backend="hf", device="cuda", dtype="bfloat16"))
    assert sampler.usage()["device"].startswith("cuda")
    params = GenerationParams(strategy="beam", num_candidates=3, max_new_tokens=24)
    results = sampler.generate(_problems(), params)
    reference = AutoModelForCausalLM.from_pretrained(gpu_llama, dtype=torch.float32).to("cuda").eval()
    for problem, candidates in zip(_problems(), results, strict=True):
        assert len(candidates) == 3
        assert len({c.token_ids for c in candidates}) == 3  # beams are distinct
        assert [c.score for c in candidates] == sorted((c.score for c in candidates), reverse=True)
        prompt = sampler.renderer.render(problem, params)
        expected = teacher_forced_logprobs(reference, prompt.token_ids, [c.token_ids for c in candidates])
        for candidate, logprobs in zip(candidates, expected, strict=True):
            assert 0.0 < candidate.possibility <= 1.0
            # bf16 against float32: a few 1e-3 on the mean (0.0042 measured on a 1B model on an H200).
            assert candidate.mean_logprob == pytest.approx(sum(logprobs) / len(logprobs), abs=0.05)
    sampler.close()


def test_sampler_pool_actor_reserves_the_gpu_and_runs_on_it(gpu_llama):
    import ray

    from btp_ray.pipeline.services import shutdown_ray
    from btp_ray.sampling import GenerationParams, SamplerConfig
    from btp_ray.sampling.pool import SamplerPool

    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        config = SamplerConfig(model=str(gpu_llama), backend="hf", device="cuda", dtype="bfloat16")
        with SamplerPool(config) as pool:
            results = pool.generate(_problems(), GenerationParams(strategy="beam", num_candidates=2, max_new_tokens=8))
            usage = pool.usage()
            gpus_left = ray.available_resources().get("GPU", 0)  # read once the actor surely runs
    finally:
        shutdown_ray(timeout_s=20)
    assert gpus_left == 0  # the actor holds the one GPU
    assert [len(cs) for cs in results] == [2, 2, 2]
    assert [u["device"] for u in usage] == ["cuda:0"]
    assert usage[0]["generated_tokens"] == sum(c.num_tokens for cs in results for c in cs)
