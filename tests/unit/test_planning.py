"""The placement planner (``btp plan``): model shapes against transformers' own parameter counts and published sizes,
the memory formulas against DeepSpeed's estimators, placements that respect one node per engine and the GPU budget,
and refusals (exit 2, one line with the reason) for plans that cannot fit."""

from __future__ import annotations

import json

import pytest

from btp_ray.cli import main as btp_main
from btp_ray.planning import KNOWN_SHAPES, Placement, PlanRefused, PlanRequest, model_shape, plan
from btp_ray.planning.memory import GB, lora_model_states_bytes, zero_model_states_bytes
from btp_ray.planning.shapes import shape_from_config


def _meta_numel(shape):
    """Parameters of the real transformers model of this shape, built on the meta device (no memory)."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Starcoder2Config

    if shape.name.startswith("openai-community/gpt2"):
        config = GPT2Config(
            n_layer=shape.num_layers, n_embd=shape.hidden_size, n_head=shape.num_heads, vocab_size=shape.vocab_size
        )
    else:
        config_class = Starcoder2Config if "starcoder2" in shape.name else LlamaConfig
        config = config_class(
            num_hidden_layers=shape.num_layers,
            hidden_size=shape.hidden_size,
            num_attention_heads=shape.num_heads,
            num_key_value_heads=shape.num_kv_heads,
            vocab_size=shape.vocab_size,
            intermediate_size=shape.intermediate_size,
            tie_word_embeddings=shape.tie_embeddings,
        )
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(dict((id(p), p.numel()) for p in model.parameters()).values())


@pytest.mark.parametrize(
    "name",
    [
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "deepseek-ai/deepseek-coder-1.3b-instruct",
        "deepseek-ai/deepseek-coder-33b-instruct",
        "codellama/CodeLlama-34b-Instruct-hf",
        "bigcode/starcoder2-15b",
        "openai-community/gpt2",
    ],
)
def test_parameter_count_matches_the_transformers_model(name):
    shape = KNOWN_SHAPES[name]
    assert shape.total_params() == _meta_numel(shape)


@pytest.mark.parametrize(
    ("alias", "published_billions"),
    [
        ("deepseek-1.3b", 1.35),
        ("deepseek-6.7b", 6.74),
        ("deepseek-33b", 33.3),
        ("codellama-34b", 33.7),
        ("wizardcoder-34b", 33.7),
        ("smollm2-135m", 0.135),
        ("smollm2-1.7b", 1.71),
        ("starcoder2-15b", 16.0),
    ],
)
def test_aliases_have_their_published_sizes(alias, published_billions):
    assert model_shape(alias).total_params() / 1e9 == pytest.approx(published_billions, rel=0.02)


def test_a_33b_model_in_bf16_is_about_66_gb_and_its_kv_cache_250_kb_per_token():
    shape = model_shape("deepseek-33b")
    assert 64 <= 2 * shape.total_params() / GB <= 68
    assert shape.kv_bytes_per_token() == 62 * 2 * 8 * 128 * 2  # layers x (K, V) x KV heads x head dim x bf16


@pytest.mark.parametrize("num_gpus", [1, 2, 8, 16])
@pytest.mark.parametrize("alias", ["deepseek-1.3b", "deepseek-33b"])
def test_full_fine_tune_model_states_equal_deepspeeds_estimators(alias, num_gpus):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    shape = model_shape(alias)
    total, largest = shape.total_params(), shape.largest_layer_params()
    nodes, per_node = (num_gpus // 8, 8) if num_gpus >= 8 else (1, num_gpus)
    _, zero2_gpu = estimate_zero2_model_states_mem_needs(total, per_node, nodes, cpu_offload=False)
    _, zero3_gpu, _ = estimate_zero3_model_states_mem_needs(total, largest, per_node, nodes, cpu_offload=False)
    assert zero_model_states_bytes(total, largest, 2, num_gpus) == zero2_gpu
    assert zero_model_states_bytes(total, largest, 3, num_gpus) == zero3_gpu


def test_largest_layer_is_what_deepspeed_finds_in_the_real_model():
    import torch
    from deepspeed.runtime.zero.stage3 import model_to_params
    from transformers import AutoModelForCausalLM, LlamaConfig

    shape = model_shape("deepseek-1.3b")
    config = LlamaConfig(
        num_hidden_layers=2,
        hidden_size=shape.hidden_size,
        num_attention_heads=shape.num_heads,
        intermediate_size=shape.intermediate_size,
        vocab_size=shape.vocab_size,
    )
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert model_to_params(model)[1] == shape.largest_layer_params()


def test_lora_under_zero3_shards_the_frozen_base():
    shape = model_shape("deepseek-33b")
    total, largest, adapter = shape.total_params(), shape.largest_layer_params(), shape.lora_params(16)
    one = lora_model_states_bytes(total, largest, adapter, 3, 1)
    eight = lora_model_states_bytes(total, largest, adapter, 3, 8)
    assert one > 66 * GB and eight < one / 6
    assert lora_model_states_bytes(total, largest, adapter, 2, 8) > 66 * GB  # ZeRO-2 keeps the base everywhere


def test_33b_on_two_8_gpu_nodes_fits_with_each_engine_on_one_node():
    result = plan(PlanRequest(target="deepseek-33b", source="deepseek-33b", nodes=2, gpus_per_node=8))
    usable = 80 * GB * 0.9
    assert result.placement is Placement.SPLIT
    assert all(slot.bytes_needed <= usable for slot in result.slots)
    for index, node in enumerate(result.engine_nodes):
        shards = [s for s in result.slots if any(r.startswith(f"engine {index} ") for r in s.roles)]
        assert len(shards) == result.engine.tensor_parallel_size
        assert {s.node for s in shards} == {node}
    assert all(len(slot.roles) == 1 for slot in result.slots)  # split: no GPU double-booked
    assert set(result.engine_nodes) == {0, 1}  # engines spread over both nodes
    assert result.learner.zero_stage == 3  # a 66 GB frozen base cannot be replicated under ZeRO-2 in 72 GB


def test_one_gpu_with_a_small_model_colocates():
    result = plan(PlanRequest(target="deepseek-1.3b", source="deepseek-1.3b", nodes=1, gpus_per_node=1))
    assert result.placement is Placement.COLOCATE
    assert result.slots[0].roles == ("engine 0 shard 0", "learner rank 0")
    assert result.notes and "gpu_memory_utilization" in result.notes[0]


def test_a_34b_full_fine_tune_on_one_24_gb_gpu_is_refused_with_the_reason(capsys):
    code = btp_main(
        ["plan", "--target", "codellama-34b", "--full", "--nodes", "1", "--gpus-per-node", "1", "--gpu-memory-gb", "24"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert "learner cannot fit" in err and "full fine-tune of codellama-34b" in err and "21.6 GB usable" in err


def test_a_33b_sampler_on_24_gb_cards_of_one_node_is_refused():
    with pytest.raises(PlanRefused, match="samplers cannot fit"):
        plan(PlanRequest(target="deepseek-1.3b", source="deepseek-33b", nodes=1, gpus_per_node=2, gpu_memory_gb=24))


def test_cli_prints_the_plan_and_json(capsys):
    assert btp_main(["plan", "--target", "deepseek-6.7b", "--nodes", "1", "--gpus-per-node", "8"]) == 0
    text = capsys.readouterr().out
    assert "node 0 GPU 7" in text and "run with: --set sampling.tensor_parallel_size=" in text
    assert btp_main(["plan", "--target", "deepseek-6.7b", "--nodes", "1", "--gpus-per-node", "8", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["num_engines"] * data["tensor_parallel_size"] + data["learner_gpus"] <= 8


def test_unknown_model_and_bad_numbers_exit_2(capsys):
    assert btp_main(["plan", "--target", "nobody/unknown-model", "--nodes", "1", "--gpus-per-node", "8"]) == 2
    assert "no offline shape" in capsys.readouterr().err
    assert btp_main(["plan", "--target", "deepseek-1.3b", "--nodes", "0", "--gpus-per-node", "8"]) == 2
    assert "--nodes" in capsys.readouterr().err


def test_a_local_config_json_gives_the_shape(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(
        num_hidden_layers=3,
        hidden_size=128,
        num_attention_heads=8,
        num_key_value_heads=2,
        intermediate_size=256,
        vocab_size=1000,
    ).save_pretrained(tmp_path)
    shape = shape_from_config(tmp_path)
    assert (shape.num_layers, shape.num_kv_heads, shape.head_dim) == (3, 2, 16)
    assert model_shape(str(tmp_path)).total_params() == _meta_numel(shape)
