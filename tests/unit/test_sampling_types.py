"""Sampler value types and config: validation, JSON round-trips, ranking, log-prob summaries, stop-sequence cuts."""

from __future__ import annotations

import json
import math

import pytest

from btp_ray.sampling import (
    Backend,
    Candidate,
    FinishReason,
    GenerationParams,
    SamplerConfig,
    SamplerIdentity,
    SamplingStrategy,
)
from btp_ray.sampling.base import cut_at_stop
from btp_ray.sampling.types import LogprobSummary, rank_candidates


def _candidate(score: float | None, text: str = "x") -> Candidate:
    return Candidate(
        task_id="T/0",
        completion=text,
        program=text,
        num_tokens=2,
        finish_reason="stop",
        sampler=SamplerIdentity("hf", "m"),
        score=score,
    )


def test_candidate_round_trips_through_json():
    candidate = Candidate(
        task_id="HumanEval/0",
        completion="    return 1\n",
        program="def f():\n    return 1\n",
        num_tokens=3,
        finish_reason=FinishReason.LENGTH,
        sampler=SamplerIdentity("vllm", "smollm2-135m", adapter="round-2"),
        rank=1,
        token_ids=(5, 6, 2),
        token_logprobs=(-0.5, -0.25, -0.75),
        sum_logprob=-1.5,
        mean_logprob=-0.5,
        possibility=math.exp(-0.5),
        score=-0.5,
        metadata={"beam": 1},
    )
    restored = Candidate.from_dict(json.loads(json.dumps(candidate.to_dict())))
    assert restored == candidate
    assert restored.sampler_id == "vllm:smollm2-135m+round-2"
    unknown = Candidate.from_dict(json.loads(json.dumps(_candidate(None).to_dict())))
    assert unknown.possibility is None and unknown.score is None


def test_candidate_rejects_impossible_possibility():
    with pytest.raises(ValueError, match="possibility"):
        Candidate("T", "", "", 1, "stop", SamplerIdentity("hf", "m"), possibility=1.5)


def test_logprob_summary_is_exp_of_mean_with_length_penalty_in_score():
    summary = LogprobSummary.of([-1.0, -2.0, -3.0, -2.0], length_penalty=2.0)
    assert summary.sum_logprob == -8.0
    assert summary.mean_logprob == -2.0
    assert summary.possibility == pytest.approx(math.exp(-2.0))
    assert summary.score == pytest.approx(-8.0 / 16)


def test_rank_orders_by_score_and_keeps_unscored_in_backend_order():
    ranked = rank_candidates(
        [_candidate(None, "a"), _candidate(-2.0, "b"), _candidate(-0.5, "c"), _candidate(None, "d")]
    )
    assert [c.completion for c in ranked] == ["c", "b", "a", "d"]
    assert [c.rank for c in ranked] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"num_candidates": 0}, "num_candidates"),
        ({"strategy": "greedy", "num_candidates": 3}, "num_candidates"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"strategy": "sample", "temperature": 0.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"stop": ("",)}, "stop"),
    ],
)
def test_generation_params_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        GenerationParams(**kwargs)


def test_generation_params_round_trip_and_enums():
    params = GenerationParams(strategy="sample", num_candidates=4, stop=["\ndef "], prompt_format="raw", seed=3)
    assert params.strategy is SamplingStrategy.SAMPLE and not params.is_deterministic
    assert GenerationParams.from_dict(json.loads(json.dumps(params.to_dict()))) == params


def test_sampler_config_validates_and_resolves_backends(monkeypatch):
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        SamplerConfig(gpu_memory_utilization=0)
    with pytest.raises(ValueError, match="backend"):
        SamplerConfig(model="gpt-4o", backend="hf")
    with pytest.raises(ValueError, match="api_base"):
        SamplerConfig(model="smollm2-135m", backend="openai")
    assert SamplerConfig(model="gpt-4o").resolved_backend() is Backend.OPENAI
    assert SamplerConfig(model="deepseek-chat").key_env_name() == "DEEPSEEK_API_KEY"
    assert SamplerConfig(model="smollm2-135m", device="cpu").resolved_backend() is Backend.HF
    compatible = SamplerConfig(model="served-model", backend="openai", api_base="http://127.0.0.1:8000/v1")
    assert compatible.model_spec().kind.value == "openai_compatible"
    config = SamplerConfig(model="gpt-4o", api_key_env="MY_KEY")
    monkeypatch.setenv("MY_KEY", "sk-secret-value")
    assert config.api_key_from_env() == "sk-secret-value"
    assert "sk-secret-value" not in repr(config) and "sk-secret-value" not in json.dumps(config.to_dict())
    assert SamplerConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_cut_at_stop_keeps_the_shortest_prefix_containing_the_stop():
    pieces = {1: "def f", 2: "():\n", 3: "    return 1", 4: "\n", 5: "def", 6: " g"}

    def decode(ids):
        return "".join(pieces[i] for i in ids)

    assert cut_at_stop([1, 2, 3, 4, 5, 6], decode, ["\ndef"]) == (5, "def f():\n    return 1")
    assert cut_at_stop([1, 2, 3], decode, ["\ndef"]) is None
    assert cut_at_stop([1, 2, 3], decode, []) is None
