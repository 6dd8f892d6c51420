"""Re-scoring the replay buffer after training (``replay.rescore_after_train``): every buffered program's possibility
is replaced by its teacher-forced mean token log-prob under the target (the embedded SmolLM2-135M, then the same with
a LoRA adapter of other weights), through the buffer's own ``update``, so that P2Value and the sampling distribution
follow; with the option off nothing is touched. The option's YAML/flag spelling and its refusal in a mode that trains
nothing are checked too."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from btp_ray.data.types import Problem
from btp_ray.experiment_config import build_experiment_config
from btp_ray.pipeline.rescore import rescore_buffer, rescore_entries
from btp_ray.replay import ReplayConfig
from btp_ray.replay.service import ReplayService
from btp_ray.sources.scorer import ProgramScore
from tests.rescore_data import SAMPLER_LOGPROB, buffered_programs, random_adapter, rescore_config, short_problems


@pytest.fixture(scope="module")
def problems() -> list[Problem]:
    return short_problems()


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_adapter(tmp_path_factory.mktemp("adapter"))


class RecordingScorer:
    """The real scorer, remembering what it returned for each program (so the test compares the buffer with the
    scorer's own answers without scoring everything twice on a CPU)."""

    def __init__(self, scorer) -> None:
        self.scorer = scorer
        self.scores: dict[tuple[str, str], ProgramScore] = {}

    @property
    def identity(self) -> str:
        return self.scorer.identity

    def score(self, problems, programs, params) -> list[ProgramScore]:
        scores = self.scorer.score(problems, programs, params)
        for problem, program, score in zip(problems, programs, scores, strict=True):
            self.scores[problem.task_id, program] = score
        return scores


def filled_service(problems: list[Problem]) -> ReplayService:
    service = ReplayService(rescore_config().replay)  # in memory: a real ReplayBuffer, no checkpoint directory
    assert service.add(buffered_programs(problems)).added == 2 * len(problems) + 1
    return service


def assert_buffer_holds_scores(service: ReplayService, scorer: RecordingScorer, problems: list[Problem]) -> list[float]:
    """The buffer's log-prob, possibility and P2Value of every known program are the ones the scorer returned for
    that very program, and the sampling distribution (power, β = 1) is proportional to those P2Values; returns the
    possibilities, in slot order."""
    known = {p.task_id for p in problems}
    records = [r for r in service.entries()[1] if r.problem_id in known]
    assert len(records) == 2 * len(problems)
    for record in records:
        score = scorer.scores.pop((record.problem_id, record.code))
        assert record.mean_token_logprob == pytest.approx(score.mean_logprob, rel=1e-9)
        assert record.possibility == pytest.approx(score.possibility, rel=1e-9)
        assert record.p2value == pytest.approx(0.5 * score.possibility + 0.5 * record.pass_rate, rel=1e-9)
    assert not scorer.scores  # every program scored is in the buffer, and nothing else was scored
    sampled_ids, probabilities = service.buffer.probabilities()
    values = np.array([r.p2value for r in service.get(sampled_ids)])
    np.testing.assert_allclose(probabilities, values / values.sum(), rtol=1e-9)
    return [record.possibility for record in records]


def test_rescoring_puts_the_scorers_possibilities_in_the_buffer(problems: list[Problem], adapter_dir: Path) -> None:
    from btp_ray.sources.scorer import PossibilityScorer

    service = filled_service(problems)
    by_id = {p.task_id: p for p in problems}
    stranger_before = service.entries()[1][-1]
    generation = rescore_config().generation

    scorer = RecordingScorer(PossibilityScorer("smollm2-135m", device="cpu"))
    summary = rescore_entries(service, scorer, by_id, generation, chunk=3)  # chunk 3: the batches are stitched
    assert (summary.rescored, summary.skipped, summary.missing) == (4, 1, 0)
    assert summary.mean_possibility_before == pytest.approx(math.exp(SAMPLER_LOGPROB))
    assert summary.scored_by == scorer.identity == "hf:smollm2-135m"
    base_possibilities = assert_buffer_holds_scores(service, scorer, problems)
    assert summary.mean_possibility_after == pytest.approx(float(np.mean(base_possibilities)))
    assert all(p < math.exp(SAMPLER_LOGPROB) for p in base_possibilities)
    assert service.entries()[1][-1] == stranger_before  # not one of the run's problems: untouched

    scorer.scorer.load_adapter(str(adapter_dir), "new")  # the same target, now with other weights
    summary = rescore_entries(service, scorer, by_id, generation)
    assert summary.rescored == 4 and summary.scored_by == scorer.identity == "hf:smollm2-135m+new"
    assert summary.mean_possibility_before == pytest.approx(float(np.mean(base_possibilities)))
    new_possibilities = assert_buffer_holds_scores(service, scorer, problems)
    assert summary.mean_possibility_after == pytest.approx(float(np.mean(new_possibilities)))
    assert all(a != pytest.approx(b, rel=1e-6) for a, b in zip(new_possibilities, base_possibilities, strict=True))


def test_option_off_leaves_the_buffer_alone(problems: list[Problem], tmp_path: Path) -> None:
    service = filled_service(problems)
    before = service.entries()
    by_id = {p.task_id: p for p in problems}
    # Off, ``rescore_buffer`` returns before touching Ray or the handle: a plain service stands in for the actor.
    assert rescore_buffer(service, rescore_config(on=False), tmp_path / "iter_1", by_id) is None
    after = service.entries()
    np.testing.assert_array_equal(after[0], before[0])
    assert after[1] == before[1]
    assert [r.possibility for r in after[1]][:4] == [math.exp(SAMPLER_LOGPROB)] * 4


def test_option_from_yaml_and_flag_and_refused_without_training(tmp_path: Path) -> None:
    from btp_ray.cli import build_btp_parser, parse_experiment_args

    assert ReplayConfig().rescore_after_train is False
    _, config = parse_experiment_args(build_btp_parser(), ["--rescore-after-train"])
    assert config.replay.rescore_after_train is True
    _, config = parse_experiment_args(build_btp_parser(), ["--rescore_after_train", "false"])
    assert config.replay.rescore_after_train is False
    path = tmp_path / "exp.yaml"
    path.write_text("replay:\n  rescore_after_train: true\n")
    _, config = parse_experiment_args(build_btp_parser(), ["--config", str(path)])
    assert config.replay.rescore_after_train is True
    with pytest.raises(ValueError, match="rescore_after_train must be a bool"):
        ReplayConfig(rescore_after_train="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="replay.rescore_after_train: --mode btp_only trains no adapter"):
        build_experiment_config({"mode": "btp_only", "replay": {"rescore_after_train": True}})
