"""HFSampler on real models on CPU: beam search on the embedded SmolLM2-135M-Instruct with possibilities checked
against an independent teacher-forced forward pass, and PEFT adapters on a tiny random-weight Llama."""

from __future__ import annotations

import math

import pytest

from btp_ray.data import load_problems
from btp_ray.models import embedded_model_dir
from btp_ray.sampling import GenerationParams, HFSampler, SamplerConfig, SamplingStrategy
from btp_ray.sampling.random_model import build_random_llama


def _independent_logprobs(model, tokenizer, prompt_text: str, chat: bool, generated: list[int]) -> list[float]:
    """One unbatched teacher-forced pass over prompt + generated tokens, written here without the sampler's code."""
    import torch

    prompt_ids = tokenizer(prompt_text, add_special_tokens=not chat)["input_ids"]
    ids = torch.tensor([prompt_ids + generated])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return [logprobs[len(prompt_ids) - 1 + i, token].item() for i, token in enumerate(generated)]


@pytest.mark.slow
def test_embedded_model_beam_search_k3_possibility_matches_teacher_forcing():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    problems = load_problems("humaneval", limit=2)
    sampler = HFSampler(SamplerConfig(model="smollm2-135m", backend="hf", device="cpu"))
    params = GenerationParams(strategy="beam", num_candidates=3, max_new_tokens=48)
    results = sampler.generate(problems, params)

    model_dir = embedded_model_dir()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32").eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert len(results) == 2
    for problem, candidates in zip(problems, results, strict=True):
        assert len(candidates) == 3
        assert len({c.token_ids for c in candidates}) == 3
        assert [c.rank for c in candidates] == [0, 1, 2]
        scores = [c.score for c in candidates]
        assert scores == sorted(scores, reverse=True)
        messages = [
            {"role": "system", "content": params.system_prompt},
            {
                "role": "user",
                "content": f"Complete the following Python function.\n\n```python\n{problem.prompt.rstrip()}\n```",
            },
        ]
        prompt_text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        for candidate in candidates:
            assert candidate.task_id == problem.task_id
            assert candidate.sampler.backend == "hf" and candidate.sampler.adapter is None
            generated = list(candidate.token_ids)
            assert candidate.num_tokens == len(generated) == len(candidate.token_logprobs)
            assert 0 < len(generated) <= 48
            expected = _independent_logprobs(model, tokenizer, prompt_text, True, generated)
            mean = sum(expected) / len(expected)
            assert candidate.possibility == pytest.approx(math.exp(mean), abs=1e-4)
            assert candidate.mean_logprob == pytest.approx(mean, abs=1e-4)
            assert candidate.score == pytest.approx(sum(expected) / len(expected) ** params.length_penalty, abs=1e-3)
            # HF's own beam scores are length-normalised already; the seed divided again and got ≈ 0.999.
            assert candidate.possibility < 0.99
            if generated[-1] == tokenizer.eos_token_id:
                assert candidate.finish_reason.value == "stop"
            else:
                assert candidate.finish_reason.value == "length" and len(generated) == 48
            assert problem.entry_point in candidate.program or candidate.program.startswith(problem.prompt)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_random_llama(tmp_path_factory.mktemp("tiny-llama"), embedded_model_dir())


def test_beam_search_is_deterministic_and_exact_on_a_tiny_llama(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    problems = load_problems("humaneval", limit=3)
    sampler = HFSampler(SamplerConfig(model=str(tiny_model), backend="hf", device="cpu", hf_batch_size=2))
    params = GenerationParams(strategy="beam", num_candidates=3, max_new_tokens=8, prompt_format="raw")
    first = sampler.generate(problems, params)
    second = sampler.generate(problems, params)
    assert [[c.token_ids for c in cs] for cs in first] == [[c.token_ids for c in cs] for cs in second]

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    for problem, candidates in zip(problems, first, strict=True):
        assert len({c.token_ids for c in candidates}) == 3
        for candidate in candidates:
            expected = _independent_logprobs(model, tokenizer, problem.prompt, False, list(candidate.token_ids))
            assert list(candidate.token_logprobs) == pytest.approx(expected, abs=1e-4)
            assert candidate.program.startswith(problem.prompt)


def test_sampling_with_seed_is_reproducible_and_greedy_gives_one(tiny_model):
    problems = load_problems("humaneval", limit=2)
    sampler = HFSampler(SamplerConfig(model=str(tiny_model), backend="hf", device="cpu"))
    sample = GenerationParams(strategy=SamplingStrategy.SAMPLE, num_candidates=3, max_new_tokens=8, seed=7)
    assert [[c.token_ids for c in cs] for cs in sampler.generate(problems, sample)] == [
        [c.token_ids for c in cs] for cs in sampler.generate(problems, sample)
    ]
    greedy = sampler.generate(problems, GenerationParams(strategy="greedy", num_candidates=1, max_new_tokens=8))
    assert [len(cs) for cs in greedy] == [1, 1]
    assert greedy[0][0].num_tokens == 8 and greedy[0][0].finish_reason.value == "length"


def test_stop_sequence_cuts_tokens_and_logprobs_together(tiny_model):
    problems = load_problems("humaneval", limit=1)
    sampler = HFSampler(SamplerConfig(model=str(tiny_model), backend="hf", device="cpu"))
    free = sampler.generate(problems, GenerationParams(strategy="greedy", num_candidates=1, max_new_tokens=16))[0][0]
    stop = free.completion[len(free.completion) // 2 :][:3]
    assert stop  # the random model writes some text
    cut = sampler.generate(
        problems, GenerationParams(strategy="greedy", num_candidates=1, max_new_tokens=16, stop=(stop,))
    )[0][0]
    assert cut.completion == free.completion[: free.completion.index(stop)]
    assert cut.num_tokens < free.num_tokens
    assert cut.token_logprobs == free.token_logprobs[: cut.num_tokens]
    assert cut.finish_reason.value == "stop"


def test_load_adapter_changes_logprobs_and_identity(tiny_model, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(tmp_path / "adapter")

    problems = load_problems("humaneval", limit=2)
    params = GenerationParams(strategy="beam", num_candidates=2, max_new_tokens=6, prompt_format="raw")
    sampler = HFSampler(SamplerConfig(model=str(tiny_model), backend="hf", device="cpu"))
    before = sampler.generate(problems, params)
    base_weights = id(sampler.model.get_input_embeddings().weight)
    sampler.load_adapter(str(tmp_path / "adapter"), "round-1")
    after = sampler.generate(problems, params)

    assert sampler.identity.adapter == "round-1"
    assert id(sampler.model.get_input_embeddings().weight) == base_weights  # the base model was not reloaded
    assert all(c.sampler.adapter == "round-1" and c.sampler_id.endswith("+round-1") for cs in after for c in cs)
    assert all(c.sampler.adapter is None for cs in before for c in cs)
    assert [c.token_logprobs for c in before[0]] != [c.token_logprobs for c in after[0]]
