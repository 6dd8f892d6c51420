"""A candidate logged to candidates.jsonl rebuilds into the same replay record as the live one, so a resumed run tops
the buffer up with exactly what a crash kept from it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from btp_ray.data import Problem, TestCase
from btp_ray.execution import ExecutionResult, ExecutionStatus
from btp_ray.experiment_config import build_experiment_config
from btp_ray.pipeline.records import TestedCandidate, records_of, training_examples
from btp_ray.pipeline.run_dir import RunDirectory
from btp_ray.pipeline.runner import BTPPipeline
from btp_ray.pipeline.stream import TestedBatch
from btp_ray.replay import ReplayBuffer
from btp_ray.sampling import Candidate, FinishReason, SamplerIdentity
from btp_ray.sampling.base import user_message


def test_logged_candidate_rebuilds_the_same_experience() -> None:
    problem = Problem(
        task_id="T/1",
        prompt="def f(x):\n",
        entry_point="f",
        tests=(TestCase.assertion("assert f(1) == 2"), TestCase.assertion("assert f(2) == 3")),
    )
    candidate = Candidate(
        task_id="T/1",
        completion="    return x + 1\n",
        program="def f(x):\n    return x + 1\n",
        num_tokens=7,
        finish_reason=FinishReason.STOP,
        sampler=SamplerIdentity("hf", "smollm2-135m", "btp-iter1-abc"),
        rank=1,
        mean_logprob=-0.25,
        possibility=0.7788007830714049,
        score=-0.25,
    )
    result = ExecutionResult(status=ExecutionStatus.FAILED, per_test=(True, False), error="test 1: got 2")
    tested = TestedCandidate.of(problem, candidate, result, iteration=2, phase="btp", kind="beam", p2value=0.6)
    live = tested.experience()
    logged = TestedCandidate.from_line(json.loads(json.dumps(tested.to_line())))
    assert logged == tested  # one line of candidates.jsonl is exactly one record
    rebuilt = logged.experience()
    # Fine-tuning takes the prompt in the learner's format from the record itself: the chat user turn the samplers
    # show a chat model, or the raw prompt a completion model continues.
    chat, raw = training_examples([rebuilt], chat=True)[0], training_examples([rebuilt], chat=False)[0]
    assert chat.prompt == user_message(problem) != raw.prompt == problem.prompt
    fields = ("problem_id", "code", "per_test", "prompt", "chat_prompt", "source_model", "iteration", "token_count",
              "mean_token_logprob", "possibility", "pass_rate", "p2value")  # fmt: skip
    assert {f: getattr(rebuilt, f) for f in fields} == {f: getattr(live, f) for f in fields}
    assert rebuilt.source_model == "hf:smollm2-135m+btp-iter1-abc" and rebuilt.pass_rate == 0.5


@pytest.mark.parametrize("mode", ["geometric", "product"])
def test_logged_p2value_is_the_one_the_buffer_samples_by(tmp_path: Path, mode: str) -> None:
    """P2Value is computed in one place: the value written to candidates.jsonl equals the replay buffer's, whatever
    the run's α and possibility mode."""
    config = build_experiment_config(
        {"max_problems": 2, "eval_fraction": 0.0, "replay": {"alpha": 0.3, "possibility": mode}}
    )
    pipeline = BTPPipeline(config, RunDirectory.create(tmp_path / "run", config))
    problem = pipeline.train_problems[0]
    candidates = [
        Candidate(
            task_id=problem.task_id,
            completion=f"x{i}",
            program=f"def f():\n    return {i}\n",
            num_tokens=4 + i,
            finish_reason=FinishReason.STOP,
            sampler=SamplerIdentity("hf", "m"),
            rank=i,
            mean_logprob=-0.1 * (i + 1),
            possibility=math.exp(-0.1 * (i + 1)),
        )
        for i in range(3)
    ]
    results = [
        ExecutionResult(status=ExecutionStatus.FAILED, per_test=tuple(j < i for j in range(len(problem.tests))))
        for i in range(3)
    ]
    batch = TestedBatch(index=0, problems=[problem], candidates=[candidates], results=[results])
    records = pipeline._scored(records_of(batch, iteration=1, phase="btp", kind="beam"))
    buffer = ReplayBuffer(config.replay)
    buffer.add([t.experience() for t in records])
    _, drawn = buffer.sample(200, True)
    sampled_by = {e.code: e.p2value for e in drawn}
    logged = {t.candidate.program: t.p2value for t in records}
    assert set(sampled_by) == set(logged) and sampled_by == pytest.approx(logged)
    expected = {
        c.program: 0.3 * (math.exp(c.mean_logprob * c.num_tokens) if mode == "product" else math.exp(c.mean_logprob))
        + 0.7 * r.pass_rate
        for c, r in zip(candidates, results, strict=True)
    }
    assert logged == pytest.approx(expected)
