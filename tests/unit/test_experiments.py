"""The experiment suite's Ray-free logic: CIs against scipy, the shared candidate pool, the ablation arms' draws,
the hyperparameter search spaces and results table, the baseline's filter metrics and the report's formatting."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
from scipy import stats

from btp_ray.data.types import Problem, TestCase
from btp_ray.execution import ExecutionResult, ExecutionStatus
from btp_ray.experiments.ablation import DEFAULT_ARMS, AblationSettings, Arm, ArmStatus, aggregate, draw_batch
from btp_ray.experiments.baseline import filter_pick, summarize_baseline
from btp_ray.experiments.hyperparam import (
    HyperparamSettings,
    TrialStatus,
    best_row,
    sensitivity,
    trial_configs,
    trial_row,
)
from btp_ray.experiments.pool import CandidatePool
from btp_ray.experiments.report import number, table, to_text
from btp_ray.experiments.stats import mean_ci
from btp_ray.pipeline.records import TestedCandidate
from btp_ray.pipeline.steps import Collected
from btp_ray.replay import ReplayConfig
from btp_ray.sampling import Candidate, FinishReason, SamplerIdentity


@pytest.mark.parametrize(
    "values", [[0.1, 0.4, 0.35], [1.0, 2.0, 3.0, 4.0, 10.0], [0.5, 0.5, 0.5001, 0.49], [-3.0, 7.5]]
)
@pytest.mark.parametrize("level", [0.95, 0.9, 0.99])
def test_mean_ci_matches_scipy_student_t(values: list[float], level: float) -> None:
    ci = mean_ci(values, level)
    low, high = stats.t.interval(level, len(values) - 1, loc=sum(values) / len(values), scale=stats.sem(values))
    assert ci.low == pytest.approx(low, rel=1e-12, abs=1e-12)
    assert ci.high == pytest.approx(high, rel=1e-12, abs=1e-12)
    assert ci.n == len(values) and ci.mean == pytest.approx(sum(values) / len(values))


def test_mean_ci_of_one_value_has_no_interval_and_rejects_bad_input() -> None:
    ci = mean_ci([0.25])
    assert (ci.mean, ci.half_width, ci.low, ci.high) == (0.25, None, None, None)
    with pytest.raises(ValueError, match="at least one"):
        mean_ci([])
    with pytest.raises(ValueError, match="finite"):
        mean_ci([1.0, math.nan])
    with pytest.raises(ValueError, match="level"):
        mean_ci([1.0, 2.0], 1.0)


def _problem(task_id: str, tests: int = 2) -> Problem:
    return Problem(
        task_id=task_id,
        prompt=f"def f_{task_id.replace('/', '_')}(x):\n",
        tests=tuple(TestCase.assertion(f"assert f(x) == {i}") for i in range(tests)),
        entry_point="f",
    )


PROBLEMS = [_problem("T/0"), _problem("T/1")]


def _entry(task_id: str, rank: int, per_test: tuple[bool, ...], logprob: float) -> TestedCandidate:
    candidate = Candidate(
        task_id=task_id,
        completion="",
        program=f"def f(x):\n    return {task_id!r}, {rank}\n",
        num_tokens=10,
        finish_reason=FinishReason.STOP,
        sampler=SamplerIdentity("hf", "tiny"),
        rank=rank,
        mean_logprob=logprob,
        possibility=math.exp(logprob),
    )
    status = ExecutionStatus.PASSED if all(per_test) else ExecutionStatus.FAILED
    return TestedCandidate(candidate, ExecutionResult(status, per_test=per_test), num_tests=2, phase="pool")


def _pool(with_passing: bool = True) -> CandidatePool:
    entries = [
        _entry("T/0", 0, (True, True) if with_passing else (True, False), -0.05),
        _entry("T/0", 1, (False, False), -0.01),  # most likely, fails
        _entry("T/0", 2, (True, False), -2.0),
        _entry("T/1", 0, (False, False), -0.3),
        _entry("T/1", 1, (False, True), -1.0),
    ]
    return CandidatePool(generation={"num_candidates": 3}, problem_ids=("T/0", "T/1"), entries=tuple(entries))


def test_pool_round_trips_and_detects_edits(tmp_path: Path) -> None:
    pool = _pool()
    path = pool.save(tmp_path / "pool.json")
    again = CandidatePool.load(path)
    assert again == pool and again.digest == pool.digest
    assert pool.summary()["fully_passing"] == 1 and pool.summary()["candidates"] == 5
    data = json.loads(path.read_text())
    data["entries"][1]["per_test"] = [True, True]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="digest"):
        CandidatePool.load(path)
    assert _pool(with_passing=False).digest != pool.digest


def test_every_arm_draws_from_the_same_pool_and_isolates_its_score() -> None:
    pool, base = _pool(), ReplayConfig(alpha=0.5, beta=1.0)
    draws = {arm: draw_batch(arm, pool, budget=200, base=base, seed=3, floor=1e-6) for arm in DEFAULT_ARMS}
    assert {d.pool_digest for d in draws.values()} == {pool.digest}
    assert all(d.status is ArmStatus.OK and len(d.experiences) == 200 for d in draws.values())
    # The filter arm trains only on fully passing programs; pass-rate-only prefers high pass rates, possibility-only
    # prefers the likeliest program (a failing one here), uniform sees every candidate.
    assert {e.passed for e in draws[Arm.NO_REPLAY].experiences} == {True}
    rate = draws[Arm.PASS_RATE_ONLY].batch_metrics(0.5)["batch_mean_pass_rate"]
    assert rate > draws[Arm.UNIFORM].batch_metrics(0.5)["batch_mean_pass_rate"]
    likeliest_program = pool.entries[1].candidate.program
    likeliest = sum(1 for e in draws[Arm.POSSIBILITY_ONLY].experiences if e.code == likeliest_program)
    assert likeliest > sum(1 for e in draws[Arm.PASS_RATE_ONLY].experiences if e.code == likeliest_program)
    again = draw_batch(Arm.P2VALUE_RANK, pool, budget=200, base=base, seed=3, floor=1e-6)
    assert [e.code for e in again.experiences] == [e.code for e in draws[Arm.P2VALUE_RANK].experiences]


def test_references_only_arm_draws_the_pools_references_and_nothing_else() -> None:
    entry = _entry("T/1", 2, (True, True), -1.5)
    reference = dataclasses.replace(entry.candidate, program="def f(x):\n    return x\n", source="reference")
    pool = dataclasses.replace(_pool(), entries=(*_pool().entries, dataclasses.replace(entry, candidate=reference)))
    assert pool.summary()["by_source"]["reference"] == {
        "candidates": 1, "fully_passing": 1, "mean_pass_rate": 1.0, "mean_possibility": pytest.approx(math.exp(-1.5))
    }  # fmt: skip
    draw = draw_batch(Arm.REFERENCES_ONLY, pool, budget=20, base=ReplayConfig(), seed=0)
    assert draw.status is ArmStatus.OK and {e.code for e in draw.experiences} == {reference.program}
    empty = draw_batch(Arm.REFERENCES_ONLY, _pool(), budget=20, base=ReplayConfig(), seed=0)
    assert empty.status is ArmStatus.NO_DATA
    assert Arm.REFERENCES_ONLY not in AblationSettings().arms  # only on request: most pools hold no references


def test_filter_arm_without_passing_candidates_records_no_data() -> None:
    draw = draw_batch(Arm.NO_REPLAY, _pool(with_passing=False), budget=4, base=ReplayConfig(), seed=0)
    assert draw.status is ArmStatus.NO_DATA and draw.experiences == []
    rows = [
        {"arm": "no_replay", "seed": 0, "status": "no_data", "metrics": {}},
        {"arm": "uniform", "seed": 0, "status": "ok", "metrics": {"final_loss": 1.0}},
        {"arm": "uniform", "seed": 1, "status": "ok", "metrics": {"final_loss": 3.0}},
    ]
    agg = aggregate(rows, [Arm.UNIFORM, Arm.NO_REPLAY], 0.95)
    assert agg["no_replay"] == {"seeds_ok": 0, "statuses": ["no_data"], "metrics": {}}
    assert agg["uniform"]["metrics"]["final_loss"]["mean"] == 2.0
    assert agg["uniform"]["metrics"]["final_loss"]["high"] == pytest.approx(2.0 + stats.t.ppf(0.975, 1) * 1.0)


def test_ablation_settings_validate() -> None:
    with pytest.raises(ValueError, match="seeds"):
        AblationSettings(seeds=(1, 1))
    with pytest.raises(ValueError, match="arms"):
        AblationSettings(arms=("bogus",))
    assert AblationSettings(arms=("uniform",)).arms == (Arm.UNIFORM,)


DEFAULTS = {"alpha": 0.5, "beta": 1.0, "sampling_method": "power", "num_beams": 3, "learning_rate": 2e-4,
            "lora_r": 16, "lora_alpha": 32, "batch_size": 8}  # fmt: skip


@pytest.mark.parametrize("search", ["focused", "grid", "random"])
def test_trial_configs_are_bounded_unique_and_reproducible(search: str) -> None:
    settings = HyperparamSettings(search_type=search, max_configs=7, seed=5)
    configs = trial_configs(settings, DEFAULTS)
    assert len(configs) == 7 and [c["index"] for c in configs] == list(range(7))
    knobs_only = [{k: v for k, v in c.items() if k != "index"} for c in configs]
    assert all(knobs_only.count(c) == 1 for c in knobs_only)
    assert configs == trial_configs(settings, DEFAULTS)
    if search == "focused":  # the run's own config first, then one knob changed at a time
        assert knobs_only[0] == DEFAULTS
        assert all(sum(c[k] != DEFAULTS[k] for k in DEFAULTS) == 1 for c in knobs_only[1:])
    if search == "random":
        assert all(0.0 <= c["alpha"] <= 1.0 and 3e-5 <= c["learning_rate"] <= 2e-3 for c in configs)


def test_focused_values_override_and_come_first() -> None:
    settings = HyperparamSettings(max_configs=3, values={"learning_rate": (2e-4, 1e-3, 5e-3)})
    assert [c["learning_rate"] for c in trial_configs(settings, DEFAULTS)] == [2e-4, 1e-3, 5e-3]
    with pytest.raises(ValueError, match="unknown knobs"):
        HyperparamSettings(values={"temperature": (1.0,)})


def test_trial_rows_best_and_sensitivity() -> None:
    def knobs(index: int, **changes: object) -> dict:
        return {"index": index, **DEFAULTS, **changes}

    rows = [
        trial_row(knobs(0), {"train_loss": 2.0, "eval_pass_at_1": 0.1, "eval_mean_pass_rate": 0.3, "evaluated": True},
                  None),
        trial_row(knobs(1, alpha=1.0), {"train_loss": 1.0, "eval_pass_at_1": 0.1, "eval_mean_pass_rate": 0.5,
                                        "evaluated": True}, None),
        trial_row(knobs(2, alpha=0.0), {"train_loss": 5.0, "done": True}, None),  # pruned by ASHA
        trial_row(knobs(3, learning_rate=-1.0), None, ValueError("learning_rate: must be a positive number")),
    ]  # fmt: skip
    assert [r["status"] for r in rows] == [
        TrialStatus.COMPLETED.value, TrialStatus.COMPLETED.value, TrialStatus.STOPPED.value, TrialStatus.ERROR.value
    ]  # fmt: skip
    assert rows[3]["error"] == "ValueError: learning_rate: must be a positive number"
    assert best_row(rows)["index"] == 1
    curve = sensitivity(rows, DEFAULTS)
    assert list(curve) == ["alpha"]
    assert [(p["value"], p["eval_mean_pass_rate"]) for p in curve["alpha"]] == [(0.5, 0.3), (1.0, 0.5)]


def _sample(task_id: str, rank: int, per_test: tuple[bool, ...]) -> TestedCandidate:
    candidate = Candidate(task_id=task_id, completion="", program=f"# {rank}", num_tokens=3,
                          finish_reason=FinishReason.STOP, sampler=SamplerIdentity("hf", "tiny"), rank=rank,
                          mean_logprob=-0.5, possibility=math.exp(-0.5))  # fmt: skip
    status = ExecutionStatus.PASSED if all(per_test) else ExecutionStatus.FAILED
    return TestedCandidate(candidate, ExecutionResult(status=status, per_test=per_test), num_tests=2, kind="sample")


def test_baseline_filter_picks_a_passing_sample_and_pass_at_k_is_unbiased() -> None:
    outcomes = {
        "T/0": [_sample("T/0", 0, (True, False)), _sample("T/0", 1, (True, True)), _sample("T/0", 2, (False, False))],
        "T/1": [_sample("T/1", 0, (False, False)), _sample("T/1", 1, (False, True)), _sample("T/1", 2, (False, False))],
    }
    assert filter_pick(outcomes["T/0"]) == 1 and filter_pick(outcomes["T/1"]) == 1
    results = summarize_baseline(PROBLEMS, Collected(outcomes=outcomes), num_samples=3, alpha=0.5)
    assert results["filter_accuracy"] == 0.5 and results["filter_solved"] == 1
    assert results["pass_at_k"] == {"pass@1": pytest.approx((1 / 3 + 0) / 2)}
    assert results["pass_at_k_curve"]["3"] == 0.5
    assert results["mean_pass_rate"] == pytest.approx((0.5 + 1 + 0 + 0 + 0.5 + 0) / 6)
    assert results["p2value_passing"]["count"] == 1 and results["p2value_failing"]["count"] == 5


def test_report_numbers_tables_and_text() -> None:
    assert [number(v) for v in (0.5, 2e-4, 0.0, 12, None, True, math.nan)] == [
        "0.500", "0.0002", "0.000", "12", "–", "yes", "n/a"
    ]  # fmt: skip
    lines = table(["a", "b"], [[1, "x|y"], [0.25, None]]).splitlines()
    assert lines == ["| a | b |", "|---|---|", "| 1 | x\\|y |", "| 0.250 | – |"]
    text = to_text("# Title\n\n![loss](plots/loss.png)\n")
    assert text == "TITLE\n\n[figure: plots/loss.png - loss]\n"
