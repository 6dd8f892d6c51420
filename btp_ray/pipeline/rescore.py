"""Re-scoring the replay buffer under the newly trained target (``replay.rescore_after_train``).

A buffered program's possibility is the mean token log-prob its producer gave it when it was sampled (or scored, for
a program source). After a fine-tuning round the target sees its programs differently; with the option on, the
pipeline scores every buffered program again, teacher-forced under the base model plus the new adapter in the
learner's exact SFT format (:class:`~btp_ray.sources.scorer.PossibilityScorer`), and hands the mean log-probs to the
buffer's ``update`` (its compiled re-scoring path), which recomputes each possibility, P2Value and sampling priority
with the run's α and possibility mode. The next draws then rank programs by how likely the model being trained finds
them now.

:func:`rescore_entries` is the logic, over any buffer with ``entries``/``get``/``update`` (a
:class:`~btp_ray.replay.service.ReplayService`, or the replay actor through a proxy) and any scorer; it is tested
without Ray. :func:`rescore_buffer` is what the runner calls after a training phase: one Ray task that loads the
target with the new adapter, re-scores the run's replay actor and exits (its model's memory goes with it).

Under ``replay.possibility=product`` the buffer combines the new mean log-prob with the record's own token count (the
sampler's), not the scorer's, as ``update`` always does.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from btp_ray.data.types import Problem
    from btp_ray.experiment_config import ExperimentConfig
    from btp_ray.replay.experience import Experience
    from btp_ray.replay.results import UpdateResult
    from btp_ray.sampling.types import GenerationParams
    from btp_ray.sources.scorer import PossibilityScorer, ProgramScore

SCORE_CHUNK = 32  # programs per scorer call: bounds the tokenised batch held at once


@dataclass(frozen=True)
class RescoreSummary:
    """What a re-scoring did, for the iteration's metrics.

    ``rescored``: entries whose possibility was replaced; ``skipped``: entries left as they were (their problem is not
    one of the run's, or their program is empty); ``missing``: entries evicted between reading and updating. The
    means are over the re-scored entries (before: those that had a possibility; ``None`` when none had).
    """

    rescored: int
    skipped: int
    missing: int
    mean_possibility_before: float | None
    mean_possibility_after: float | None
    scored_by: str
    wall_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RescorableBuffer(Protocol):
    """The replay calls re-scoring needs (:class:`~btp_ray.replay.service.ReplayService` has them)."""

    def entries(self) -> tuple[np.ndarray, list[Experience]]: ...

    def get(self, ids: Sequence[int] | np.ndarray) -> list[Experience]: ...

    def update(
        self, ids: Sequence[int] | np.ndarray, *, mean_token_logprobs: Sequence[float | None] | None = None
    ) -> UpdateResult: ...


class Scorer(Protocol):
    """What scores programs (:class:`~btp_ray.sources.scorer.PossibilityScorer`)."""

    @property
    def identity(self) -> str: ...

    def score(
        self, problems: Sequence[Problem], programs: Sequence[str], params: GenerationParams
    ) -> list[ProgramScore]: ...


def rescore_entries(
    buffer: RescorableBuffer,
    scorer: Scorer,
    problems_by_id: Mapping[str, Problem],
    params: GenerationParams,
    *,
    chunk: int = SCORE_CHUNK,
) -> RescoreSummary:
    """Score every entry of ``buffer`` under ``scorer`` and update the buffer with the new mean log-probs."""
    started = time.perf_counter()
    ids, experiences = buffer.entries()
    chosen = [i for i, e in enumerate(experiences) if e.problem_id in problems_by_id and e.code.strip()]
    records = [experiences[i] for i in chosen]
    chosen_ids = np.asarray(ids, dtype=np.int64)[chosen]
    means: list[float | None] = []
    for start in range(0, len(records), chunk):
        part = records[start : start + chunk]
        scores = scorer.score([problems_by_id[r.problem_id] for r in part], [r.code for r in part], params)
        means += [score.mean_logprob for score in scores]
    missing: tuple[int, ...] = ()
    after: float | None = None
    if records:
        missing = buffer.update(chosen_ids, mean_token_logprobs=means).missing
        present = chosen_ids[~np.isin(chosen_ids, np.asarray(missing, dtype=np.int64))]
        after = _mean([e.possibility for e in buffer.get(present)]) if present.size else None
    return RescoreSummary(
        rescored=len(records) - len(missing),
        skipped=len(experiences) - len(records),
        missing=len(missing),
        mean_possibility_before=_mean([r.possibility for r in records]),
        mean_possibility_after=after,
        scored_by=scorer.identity,
        wall_s=time.perf_counter() - started,
    )


def target_scorer(config: ExperimentConfig, trained_dir: str | Path) -> PossibilityScorer:
    """A :class:`PossibilityScorer` of the target as trained into ``trained_dir`` (an iteration's output, with its
    manifest): the base model plus that LoRA adapter, or the full model a full fine-tune saved there."""
    from btp_ray.sources.scorer import PossibilityScorer
    from btp_ray.training.results import AdapterManifest

    if config.training is None:
        raise ValueError("replay.rescore_after_train: the run has no training config, so no trained target")
    manifest = AdapterManifest.read(trained_dir)
    device, dtype = config.sampling.device, config.sampling.dtype
    if manifest.adapter_kind == "full":
        return PossibilityScorer(str(trained_dir), device=device, dtype=dtype)
    scorer = PossibilityScorer(config.training.base_model, device=device, dtype=dtype)
    scorer.load_adapter(str(trained_dir), manifest.adapter_name)
    return scorer


def rescore_buffer(
    replay: Any,
    config: ExperimentConfig,
    adapter_dir: str | Path,
    problems_by_id: Mapping[str, Problem],
) -> dict[str, Any] | None:
    """Re-score the run's replay actor (``replay``, its handle) under the target trained into ``adapter_dir``;
    returns the :class:`RescoreSummary` as a dict, or ``None`` (nothing done) when ``replay.rescore_after_train`` is
    off.

    The scoring runs in one Ray task that reserves no CPU (the samplers and sandboxes keep theirs; nothing else runs
    between training and evaluation) and one GPU when the learner trains on GPUs, and exits afterwards.
    """
    if not config.replay.rescore_after_train:
        return None
    import ray

    assert config.training is not None  # ExperimentConfig refuses the option in modes that do not train
    gpus = 1 if config.training.use_gpu else 0
    # max_calls=1: the worker exits after the task, and the model's memory with it.
    task = ray.remote(num_cpus=0, num_gpus=gpus, max_calls=1)(_rescore_task).options(name="btp-rescore-buffer")
    return ray.get(task.remote(replay, config, str(adapter_dir), dict(problems_by_id)))


def _rescore_task(
    replay: Any,
    config: ExperimentConfig,
    adapter_dir: str,
    problems_by_id: dict[str, Problem],
) -> dict[str, Any]:
    scorer = target_scorer(config, adapter_dir)
    return rescore_entries(_ActorBuffer(replay), scorer, problems_by_id, config.generation).to_dict()


class _ActorBuffer:
    """The replay actor's calls as plain ones, for :func:`rescore_entries`."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def entries(self) -> tuple[np.ndarray, list[Experience]]:
        import ray

        return ray.get(self.handle.entries.remote())

    def get(self, ids: Sequence[int] | np.ndarray) -> list[Experience]:
        import ray

        return ray.get(self.handle.get.remote(ids))

    def update(
        self, ids: Sequence[int] | np.ndarray, *, mean_token_logprobs: Sequence[float | None] | None = None
    ) -> UpdateResult:
        import ray

        return ray.get(self.handle.update.remote(ids, mean_token_logprobs=mean_token_logprobs))


def _mean(values: Sequence[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return sum(known) / len(known) if known else None
