"""Unit tests of the replay record and the P2Value score (no Ray)."""

from __future__ import annotations

import json
import math

import pytest

from btp_ray.replay import Experience, PossibilityMode, dedup_form, p2value, possibility_from_logprob


def test_p2value_is_the_alpha_weighted_mix() -> None:
    assert p2value(0.8, 0.2, 0.5) == pytest.approx(0.5)
    assert p2value(0.8, 0.2, 0.25) == pytest.approx(0.25 * 0.8 + 0.75 * 0.2)
    assert p2value(0.8, 0.2, 0.0) == pytest.approx(0.2)
    assert p2value(0.8, 0.2, 1.0) == pytest.approx(0.8)


def test_p2value_without_possibility_falls_back_to_pass_rate() -> None:
    assert p2value(None, 0.6, 0.9) == pytest.approx(0.6)


@pytest.mark.parametrize(
    ("possibility", "pass_rate", "alpha"),
    [(math.nan, 0.5, 0.5), (-0.1, 0.5, 0.5), (1.1, 0.5, 0.5), (0.5, math.nan, 0.5), (0.5, -0.01, 0.5),
     (0.5, 1.5, 0.5), (0.5, 0.5, -0.1), (0.5, 0.5, 1.01), (0.5, 0.5, math.nan)],
)  # fmt: skip
def test_p2value_rejects_out_of_range_inputs(possibility: float, pass_rate: float, alpha: float) -> None:
    with pytest.raises(ValueError):
        p2value(possibility, pass_rate, alpha)


def test_geometric_possibility_is_length_independent_but_product_vanishes() -> None:
    short = possibility_from_logprob(-0.1, 10, PossibilityMode.GEOMETRIC)
    long = possibility_from_logprob(-0.1, 400, "geometric")
    assert short == pytest.approx(math.exp(-0.1)) and long == pytest.approx(math.exp(-0.1))
    assert possibility_from_logprob(-0.1, 10, "product") == pytest.approx(math.exp(-1.0))
    assert possibility_from_logprob(-0.1, 400, "product") < 1e-17


def test_possibility_rejects_positive_or_nan_logprob_and_product_needs_tokens() -> None:
    for bad in (0.1, math.nan, -math.inf):
        with pytest.raises(ValueError, match="mean_token_logprob"):
            possibility_from_logprob(bad, 5)
    with pytest.raises(ValueError, match="token_count"):
        possibility_from_logprob(-0.1, 0, "product")


def test_experience_derives_pass_rate_possibility_and_p2value() -> None:
    record = Experience(problem_id="HumanEval/0", code="x = 1", per_test=[True, False, True, True],
                        mean_token_logprob=-0.5, token_count=12)  # fmt: skip
    assert record.per_test == (True, False, True, True)
    assert record.pass_rate == pytest.approx(0.75)
    assert record.possibility == pytest.approx(math.exp(-0.5))
    assert record.p2value == pytest.approx(0.5 * math.exp(-0.5) + 0.5 * 0.75)
    assert record.updated_at == record.created_at
    assert not record.passed


def test_experience_without_logprob_has_unknown_possibility() -> None:
    record = Experience(problem_id="p", code="pass", per_test=(True, True))
    assert record.possibility is None
    assert record.p2value == 1.0 and record.passed


def test_experience_json_round_trip() -> None:
    record = Experience(problem_id="p", prompt="def f():", code="  return 1", per_test=(True, False),
                        source_model="m", iteration=2, token_count=4, mean_token_logprob=-0.25)  # fmt: skip
    restored = Experience.from_dict(json.loads(json.dumps(record.to_dict())))
    assert restored == record


@pytest.mark.parametrize(
    "fields",
    [{"problem_id": ""}, {"per_test": ()}, {"per_test": (1, 0)}, {"pass_rate": 1.2}, {"possibility": -0.5},
     {"possibility": math.nan}, {"p2value": 2.0}, {"token_count": -1}, {"iteration": 1.5},
     {"mean_token_logprob": 0.3}],
)  # fmt: skip
def test_experience_rejects_bad_fields(fields: dict) -> None:
    base = {"problem_id": "p", "code": "x", "per_test": (True,)}
    with pytest.raises(ValueError):
        Experience(**{**base, **fields})


def test_dedup_form_ignores_line_endings_trailing_space_and_blank_lines() -> None:
    assert dedup_form("def f():\r\n    return 1   \r\n\r\n") == dedup_form("def f():\n    return 1")
    assert dedup_form("def f():\n  return 1") != dedup_form("def f():\n    return 1")
