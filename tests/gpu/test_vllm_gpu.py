"""VLLMSampler on a CUDA GPU (skipped without one): beam search and sampling on a random-weight Llama built locally
(no download), with possibilities checked against HF teacher forcing on the same GPU."""

from __future__ import annotations

import math

import pytest

from btp_ray.data.types import Problem, TestCase

pytestmark = [pytest.mark.gpu, pytest.mark.vllm]


def _problems() -> list[Problem]:
    prompts = [
        ("gpu/0", 'def add(a, b):\n    """Return a + b."""\n', "add"),
        ("gpu/1", 'def neg(x):\n    """Return -x."""\n', "neg"),
    ]
    return [Problem(t, p, (TestCase.assertion("assert True"),), entry_point=e) for t, p, e in prompts]


@pytest.fixture(scope="module")
def model_dir(gpu_llama):
    return gpu_llama


def test_vllm_beam_search_on_gpu_matches_teacher_forcing(model_dir):
    pytest.importorskip("vllm")
    from btp_ray.sampling import GenerationParams, SamplerConfig
    from btp_ray.sampling.hf import HFSampler, teacher_forced_logprobs
    from btp_ray.sampling.vllm_sampler import VLLMSampler

    config = SamplerConfig(
        model=str(model_dir), backend="vllm", device="cuda", dtype="float32", gpu_memory_utilization=0.3
    )
    sampler = VLLMSampler(config)
    params = GenerationParams(strategy="beam", num_candidates=3, max_new_tokens=24, prompt_format="raw")
    results = sampler.generate(_problems(), params)
    sampled = sampler.generate(_problems(), GenerationParams(strategy="sample", num_candidates=4, max_new_tokens=8))
    sampler.close()

    hf = HFSampler(SamplerConfig(model=str(model_dir), backend="hf", device="cuda", dtype="float32"))
    for problem, candidates in zip(_problems(), results, strict=True):
        assert len({c.token_ids for c in candidates}) == 3
        assert [c.score for c in candidates] == sorted((c.score for c in candidates), reverse=True)
        prompt = hf.renderer.render(problem, params)
        expected = teacher_forced_logprobs(hf.model, prompt.token_ids, [c.token_ids for c in candidates])
        for candidate, logprobs in zip(candidates, expected, strict=True):
            assert candidate.possibility == pytest.approx(math.exp(sum(logprobs) / len(logprobs)), abs=1e-3)
    assert [len(cs) for cs in sampled] == [4, 4]
