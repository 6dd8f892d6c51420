"""A candidate logged to candidates.jsonl rebuilds into the same replay record as the live one, so a resumed run tops
the buffer up with exactly what a crash kept from it."""

from __future__ import annotations

import json

from btp_ray.data import Problem, TestCase
from btp_ray.execution import ExecutionResult, ExecutionStatus
from btp_ray.pipeline.runner import _replay_pair, candidate_record, experience_of
from btp_ray.sampling import Candidate, FinishReason, SamplerIdentity


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
    live = experience_of(problem, candidate, result, iteration=2)
    record = json.loads(
        json.dumps(
            candidate_record(
                iteration=2, phase="btp", problem=problem, candidate=candidate, result=result, p2value=0.6, kind="beam"
            )
        )
    )
    rebuilt = experience_of(problem, *_replay_pair(record), record["iteration"])
    fields = ("problem_id", "code", "per_test", "prompt", "source_model", "iteration", "token_count",
              "mean_token_logprob", "possibility", "pass_rate", "p2value")  # fmt: skip
    assert {f: getattr(rebuilt, f) for f in fields} == {f: getattr(live, f) for f in fields}
    assert rebuilt.source_model == "hf:smollm2-135m+btp-iter1-abc" and rebuilt.pass_rate == 0.5
