"""The one-process Learner on a tiny random-weight Llama (2 layers, hidden 64, the embedded SmolLM2 tokenizer):
LoRA and full fine-tuning lower the loss, the adapter folder + manifest are written, loading the adapter raises the
log-prob of the training programs, iterations chain through ``init_adapter``, and bad input is refused clearly."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from btp_ray.training import (
    AdapterManifest,
    Learner,
    LearnerError,
    TrainingConfig,
    TrainingExample,
    adapter_name_for,
)
from btp_ray.training.dataset import examples_hash
from btp_ray.training.modeling import program_logprobs
from btp_ray.training.tiny_model import make_tiny_llama
from tests.learner_data import EXAMPLES, lora_config

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def lora_run(tiny_model, tmp_path_factory):
    learner = Learner(lora_config(tiny_model))
    output = tmp_path_factory.mktemp("adapter") / "iter1"
    result = learner.train(EXAMPLES, output_dir=output, iteration=1)
    return learner, result


def _base(model_path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_path)


def test_lora_training_lowers_the_loss_and_reports_every_step(lora_run):
    _, result = lora_run
    steps = result.step_metrics
    assert [m.step for m in steps] == [1, 2, 3, 4, 5, 6]
    assert result.final_loss < result.first_loss
    assert all(m.tokens > 0 and m.tokens_per_second > 0 for m in steps)
    learning_rates = [m.learning_rate for m in steps]
    assert learning_rates[0] == pytest.approx(1e-2)
    assert learning_rates == sorted(learning_rates, reverse=True)  # linear decay
    assert steps[-1].epoch == pytest.approx(3.0)  # 4 examples / batch 2 = 2 steps per epoch
    assert result.overhead_seconds >= 0
    assert result.total_seconds >= result.train_seconds > 0


def test_adapter_folder_and_manifest(lora_run, tiny_model):
    _, result = lora_run
    files = {p.name for p in result.adapter_dir.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "manifest.json"} <= files
    adapter_config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert set(adapter_config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert adapter_config["r"] == 8
    manifest = AdapterManifest.read(result.adapter_dir)
    assert manifest == result.manifest
    assert manifest.iteration == 1
    assert manifest.base_model == str(tiny_model)
    assert manifest.data_hash == examples_hash(EXAMPLES)
    assert manifest.adapter_name == adapter_name_for(1, manifest.data_hash)
    assert manifest.adapter_kind == "lora"
    assert manifest.prompt_format == "chat"
    assert manifest.strategy == "single-process"
    assert manifest.num_examples == 4
    assert manifest.metrics["final_loss"] == pytest.approx(result.final_loss)
    assert manifest.metrics["steps"] == 6


def test_loading_the_adapter_raises_the_log_prob_of_the_training_programs(lora_run, tiny_model):
    from peft import PeftModel

    learner, result = lora_run
    dataset = learner.build_dataset(EXAMPLES)
    base = _base(tiny_model)
    before = program_logprobs(base, dataset.features, dataset.pad_token_id)
    tuned = PeftModel.from_pretrained(base, str(result.adapter_dir), adapter_name=result.manifest.adapter_name)
    after = program_logprobs(tuned, dataset.features, dataset.pad_token_id)
    assert tuned.active_adapter == result.manifest.adapter_name
    assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)


def test_next_iteration_continues_from_the_previous_adapter(lora_run, tmp_path):
    learner, first = lora_run
    assert not any("lora_" in name for name, _ in learner._base_model.named_modules())  # base restored
    second = learner.train(EXAMPLES, output_dir=tmp_path / "iter2", iteration=2, init_adapter=first.adapter_dir)
    assert second.first_loss < first.first_loss
    assert second.manifest.adapter_name != first.manifest.adapter_name
    assert second.manifest.iteration == 2


def test_priority_weighting_learns_only_from_weighted_examples(tiny_model, tmp_path):
    from peft import PeftModel

    examples = [
        TrainingExample(prompt="Write add(a, b).", program="def add(a, b):\n    return a + b", weight=1.0),
        TrainingExample(prompt="Print hello.", program="print('hello world')", weight=0.0),
    ]
    learner = Learner(lora_config(tiny_model, weighting="priority", per_device_batch_size=1, max_steps=4))
    result = learner.train(examples, output_dir=tmp_path / "weighted")
    dataset = learner.build_dataset(examples)
    base = _base(tiny_model)
    before = program_logprobs(base, dataset.features, dataset.pad_token_id)
    after = program_logprobs(PeftModel.from_pretrained(base, str(result.adapter_dir)), dataset.features, 2)
    gain_weighted, gain_ignored = after[0] - before[0], after[1] - before[1]
    assert gain_weighted > 0
    assert gain_weighted > gain_ignored


def test_full_fine_tune_writes_complete_weights(tiny_model, tmp_path):
    learner = Learner(lora_config(tiny_model, use_lora=False, learning_rate=1e-3, max_steps=3))
    result = learner.train(EXAMPLES, output_dir=tmp_path / "full")
    files = {p.name for p in result.adapter_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "manifest.json"} <= files
    assert result.manifest.adapter_kind == "full"
    assert result.manifest.target_modules is None
    dataset = learner.build_dataset(EXAMPLES)
    before = program_logprobs(_base(tiny_model), dataset.features, dataset.pad_token_id)
    after = program_logprobs(_base(result.adapter_dir), dataset.features, dataset.pad_token_id)
    assert sum(after) > sum(before)


def test_missing_base_model_is_refused(tmp_path):
    with pytest.raises(LearnerError, match="not found"):
        Learner(TrainingConfig(base_model=str(tmp_path / "no-such-model") + "/x/y"))
    with pytest.raises(LearnerError, match="no config.json"):
        Learner(TrainingConfig(base_model=str(tmp_path)))
    with pytest.raises(LearnerError, match="API model"):
        Learner(TrainingConfig(base_model="gpt-4o"))
    offline = Learner(TrainingConfig(base_model="btp-tests/not-a-cached-model"))  # a hub id, not in the cache
    with pytest.raises(LearnerError, match="cannot load"):
        offline.prepare()


def test_unknown_lora_target_modules_are_named(tiny_model, tmp_path):
    learner = Learner(lora_config(tiny_model, target_modules=("q_proj", "qkv_fused", "w_gate")))
    with pytest.raises(LearnerError, match=r"\['qkv_fused', 'w_gate'\].*q_proj"):
        learner.train(EXAMPLES, output_dir=tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_empty_and_prompt_only_batches_are_refused(tiny_model, tmp_path):
    learner = Learner(lora_config(tiny_model))
    with pytest.raises(LearnerError, match="empty training batch"):
        learner.train([], output_dir=tmp_path / "a")
    with pytest.raises(LearnerError, match="only prompts"):
        learner.train([TrainingExample(prompt="Write add(a, b).")], output_dir=tmp_path / "b")


def test_zero_weights_and_bad_init_adapter_are_refused(tiny_model, tmp_path):
    weighted = Learner(lora_config(tiny_model, weighting="priority"))
    with pytest.raises(LearnerError, match="weight 0"):
        weighted.train([TrainingExample("p", "x = 1", weight=0.0)], output_dir=tmp_path / "a")
    with pytest.raises(LearnerError, match="adapter_config.json"):
        Learner(lora_config(tiny_model)).train(EXAMPLES, output_dir=tmp_path / "b", init_adapter=tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_in_one_process(tiny_model, tmp_path, stage):
    """DeepSpeed ZeRO-2/3 on CPU (gloo, world of one) in a fresh interpreter, since it leaves process-global state.
    The first run JIT-builds DeepSpeed's shm comm op (~2.5 min) into the btp-ray torch-extensions cache."""
    script = textwrap.dedent(
        f"""
        import json
        from btp_ray.training import Learner, TrainingConfig, TrainingExample
        examples = [TrainingExample(p, c) for p, c in {[(e.prompt, e.program) for e in EXAMPLES]!r}]
        config = TrainingConfig(base_model={str(tiny_model)!r}, lora_r=8, learning_rate=1e-2, max_steps=4,
                                per_device_batch_size=1, gradient_accumulation_steps=2, seed=3,
                                strategy="deepspeed", zero_stage={stage})
        result = Learner(config).train(examples, output_dir={str(tmp_path / "ds")!r})
        print(json.dumps({{"losses": [m.loss for m in result.step_metrics], "strategy": result.manifest.strategy}}))
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["strategy"] == f"deepspeed-zero{stage}"
    assert report["losses"][-1] < report["losses"][0]
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "ds" / "adapter_model.safetensors")
    lora_a = [t for name, t in weights.items() if name.endswith("q_proj.lora_A.weight")]
    assert lora_a and all(tuple(t.shape) == (8, 64) for t in lora_a)  # gathered, not ZeRO-3 partitions
    assert any(float(t.abs().sum()) > 0 for name, t in weights.items() if "lora_B" in name)
