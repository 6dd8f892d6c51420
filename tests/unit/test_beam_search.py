"""btp-ray's beam-search bookkeeping (:class:`BeamProblem`) against transformers' own beam search.

A small random Llama (real transformers model, sharpened output layer so that ties are unlikely) is driven one step
at a time by :class:`BeamProblem`, each live beam's next-token log-probs computed by a full forward pass; the
finished hypotheses must be exactly the sequences ``generate(num_beams=k, early_stopping=True)`` returns, for
several EOS tokens (so beams finish early, at different steps) and length penalties.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from btp_ray.sampling.beam import Beam, BeamProblem, stop_string_checker  # noqa: E402

VOCAB = 48


@pytest.fixture(scope="module")
def model():
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    torch.manual_seed(7)
    llama = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        llama.lm_head.weight.mul_(40.0)  # peaked distributions: no near-ties between the two implementations
    return llama


def _hf_beams(model, prompt: list[int], k: int, max_new: int, eos: int, penalty: float) -> list[list[int]]:
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            num_beams=k,
            num_return_sequences=k,
            do_sample=False,
            early_stopping=True,
            length_penalty=penalty,
            max_new_tokens=max_new,
            eos_token_id=eos,
            pad_token_id=eos,
        )
    beams = []
    for row in out[:, len(prompt) :].tolist():
        beams.append(row[: row.index(eos) + 1] if eos in row else row)
    return beams


def _btp_beams(model, prompt: list[int], k: int, max_new: int, eos: int, penalty: float) -> list[list[int]]:
    problem = BeamProblem(k, max_new, frozenset([eos]), penalty)
    while not problem.done:
        rows = torch.tensor([prompt + beam.token_list for beam in problem.live])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(input_ids=rows).logits[:, -1, :].float(), dim=-1)
        top = torch.topk(logprobs, problem.candidates_per_step)
        problem.step(
            [
                dict(zip(ids.tolist(), values.tolist(), strict=True))
                for ids, values in zip(top.indices, top.values, strict=True)
            ]
        )
    return [hypothesis.beam.token_list for hypothesis in problem.results()]


@pytest.mark.parametrize("penalty", [1.0, 0.0, 2.0])
def test_beam_problem_returns_transformers_beams(model, penalty: float) -> None:
    checked = finished_early = 0
    for seed in range(3):
        generator = torch.Generator().manual_seed(seed)
        prompt = [0, *torch.randint(2, VOCAB, (5,), generator=generator).tolist()]
        # EOS ids the model does produce (tokens of its own beams), so that hypotheses finish at different steps.
        produced = _hf_beams(model, prompt, 3, 10, 1, penalty)
        for eos in sorted({1} | {beam[i] for beam in produced for i in (1, 4) if i < len(beam)})[:5]:
            expected = _hf_beams(model, prompt, 3, 10, eos, penalty)
            got = _btp_beams(model, prompt, 3, 10, eos, penalty)
            assert got == expected, f"prompt {prompt}, eos {eos}, length_penalty {penalty}"
            checked += 1
            finished_early += any(len(beam) < 10 for beam in got)
    assert checked >= 9
    assert finished_early >= 3, "EOS should end some beams early, or the test checks only the length limit"


def test_beam_problem_rules() -> None:
    problem = BeamProblem(num_beams=2, max_new_tokens=3, eos_ids=frozenset([0]))
    assert problem.candidates_per_step == 4
    kept = problem.step([{5: -0.1, 0: -0.5, 6: -1.0, 7: -3.0}])
    # EOS is second best: a finished hypothesis (among the first k), so the live beams are 5 and 6.
    assert [c.token for c in kept] == [5, 6]
    assert [h.beam.token_list for h in problem.finished] == [[0]]
    assert problem.finished[0].score == pytest.approx(-0.5)
    kept = problem.step([{8: -0.2, 0: -0.3, 9: -2.0, 10: -2.1}, {0: -0.05, 11: -0.1, 12: -4.0, 13: -5.0}])
    # candidates: 5,8 -0.3 | 5,0 -0.4 | 6,0 -1.05 | 6,11 -1.1: the EOS at rank 2 finishes (score -0.4/2), the
    # one at rank 3 is beyond the first k and dropped; two hypotheses finished: done (early stopping).
    assert problem.done
    assert [h.beam.token_list for h in problem.results()] == [[5, 0], [0]]
    assert problem.results()[0].score == pytest.approx(-0.2)
    assert [c.token for c in kept] == [8, 11]
    with pytest.raises(RuntimeError):
        problem.step([{}, {}])


def test_max_new_tokens_finishes_the_best_live_beams() -> None:
    problem = BeamProblem(num_beams=2, max_new_tokens=2, eos_ids=frozenset([0]), length_penalty=1.0)
    problem.step([{3: -0.1, 4: -0.2, 5: -3.0, 6: -4.0}])
    problem.step([{7: -0.5, 8: -0.6, 9: -5.0, 0: -6.0}, {7: -0.1, 8: -2.0, 9: -5.0, 0: -7.0}])
    assert problem.done
    results = problem.results()
    assert [h.beam.token_list for h in results] == [[4, 7], [3, 7]]
    assert [h.beam.logprob_list for h in results] == [[-0.2, -0.1], [-0.1, -0.5]]
    assert results[0].score == pytest.approx(-0.15)


def test_stop_strings_end_a_beam_like_eos() -> None:
    vocab = {1: "def", 2: " f", 3: "()", 4: "\n", 5: "x", 6: "\ndef"}

    def decode(ids):
        return "".join(vocab[i] for i in ids)

    checker = stop_string_checker(["\ndef"], decode)
    assert checker is not None and stop_string_checker([], decode) is None
    problem = BeamProblem(num_beams=1, max_new_tokens=8, eos_ids=frozenset([0]), stop_hit=checker)
    for distribution in ({1: -0.1, 5: -3.0}, {2: -0.1, 5: -3.0}, {4: -0.1, 5: -3.0}):
        problem.step([distribution])
    assert not problem.done
    problem.step([{1: -0.2, 5: -3.0}])  # "\n" + "def" completes the stop string across two tokens
    assert problem.done
    assert problem.results()[0].beam.token_list == [1, 2, 4, 1]
    assert not checker(Beam(problem.results()[0].beam.tokens, problem.results()[0].beam.logprobs, 2, 0.0), 3)


def test_beam_search_implementation_is_chosen_per_backend_and_recorded(tmp_path) -> None:
    import json

    from btp_ray.experiment_config import ExperimentConfig
    from btp_ray.pipeline.run_dir import RunDirectory
    from btp_ray.sampling import GenerationParams, SamplerConfig, SamplingStrategy
    from btp_ray.sampling.config import Backend, sampling_record

    assert SamplerConfig(backend="vllm").resolved_beam_search() == "btp"
    assert SamplerConfig(backend="hf").resolved_beam_search() == "native"
    assert SamplerConfig(backend="vllm", beam_search="native").resolved_beam_search() == "native"
    assert SamplerConfig(model="gpt-4o-mini").resolved_beam_search() == "sample_and_rank"
    assert SamplerConfig(beam_search="btp").resolved_beam_search(Backend.VLLM) == "btp"
    with pytest.raises(ValueError, match="beam_search must be one of auto, btp, native"):
        SamplerConfig(beam_search="fast")
    with pytest.raises(ValueError, match="block_size"):
        SamplerConfig(block_size=0)
    assert SamplerConfig.from_dict(SamplerConfig(beam_search="native").to_dict()).beam_search.value == "native"
    assert sampling_record(SamplerConfig(backend="vllm"), "beam") == {
        "backend": "vllm",
        "model": "smollm2-135m",
        "strategy": "beam",
        "beam_search": "btp",
    }
    assert "beam_search" not in sampling_record(SamplerConfig(backend="vllm"), "sample_and_rank")
    programs = SamplerConfig(model="references", scorer_model="smollm2-135m")  # a program source generates nothing
    assert sampling_record(programs, "beam") == {
        "backend": "programs", "model": "references", "strategy": "beam", "beam_search": "none"
    }  # fmt: skip

    ranked = GenerationParams(strategy="sample_and_rank", num_candidates=4)
    assert ranked.strategy is SamplingStrategy.SAMPLE_AND_RANK and not ranked.is_deterministic
    assert GenerationParams.from_dict(ranked.to_dict()) == ranked
    with pytest.raises(ValueError, match="temperature must be > 0 for strategy=sample_and_rank"):
        GenerationParams(strategy="sample_and_rank", temperature=0.0)

    config = ExperimentConfig(sampling=SamplerConfig(backend="hf"), generation=GenerationParams(num_candidates=3))
    run = RunDirectory.create(tmp_path / "run", config)
    environment = json.loads((run.path / "environment.json").read_text())
    assert environment["sampling"] == {
        "backend": "hf",
        "model": "smollm2-135m",
        "strategy": "beam",
        "beam_search": "native",
    }
