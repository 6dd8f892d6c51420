"""Step 3, the replay-strategy ablation: one candidate pool (sampled once, tested once), the same training budget,
and for each arm × seed a replay buffer with the arm's strategy (P2Value power, P2Value rank, pass rate only α=0,
possibility only α=1, uniform) or the classic filter arm (no replay: train on fully passing candidates only), a
fine-tune, and a greedy evaluation on the held-out problems. Each metric is reported as mean ± 95% CI over seeds.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from btp_ray.config_io import to_dict
from btp_ray.data.types import Problem
from btp_ray.experiment_config import ExperimentConfig
from btp_ray.experiments.common import RUN_INFO, run_record, write_json
from btp_ray.experiments.pool import CandidatePool, build_pool
from btp_ray.experiments.stats import mean_ci
from btp_ray.experiments.training import Trainer, TrainerKind
from btp_ray.metrics import CostRecord
from btp_ray.pipeline.services import Services
from btp_ray.pipeline.steps import evaluate_greedy
from btp_ray.replay import Experience, PossibilityMode, ReplayBuffer, ReplayConfig, Strategy, scored
from btp_ray.tracking import TrackingConfig, flatten_metrics, flatten_params
from btp_ray.tracking.studies import log_study_run, study_tracking

logger = logging.getLogger(__name__)

RESULTS_FILE = "ablation_results.json"
POOL_FILE = "candidate_pool.json"


class Arm(str, enum.Enum):
    """What each arm isolates."""

    P2VALUE_POWER = "p2value_power"  # P(i) ∝ P2Value^β (BTP)
    P2VALUE_RANK = "p2value_rank"  # P(i) ∝ (1/rank)^β by P2Value
    PASS_RATE_ONLY = "pass_rate_only"  # α = 0: the pass rate alone
    POSSIBILITY_ONLY = "possibility_only"  # α = 1: the possibility alone
    UNIFORM = "uniform"  # replay without priorities
    NO_REPLAY = "no_replay"  # the filter baseline: fully passing candidates only
    REFERENCES_ONLY = "references_only"  # uniform over the pool's correct reference solutions (mixed pools)


# The arms a study runs unless told otherwise (references only needs a pool with references in it).
DEFAULT_ARMS = (
    Arm.P2VALUE_POWER,
    Arm.P2VALUE_RANK,
    Arm.PASS_RATE_ONLY,
    Arm.POSSIBILITY_ONLY,
    Arm.UNIFORM,
    Arm.NO_REPLAY,
)


class ArmStatus(str, enum.Enum):
    OK = "ok"
    NO_DATA = "no_data"  # the filter arm when no candidate passes every test
    FAILED = "failed"


# The metrics compared across arms (all per arm × seed; mean ± CI over seeds).
METRICS = (
    "eval_pass_at_1",
    "eval_mean_pass_rate",
    "final_loss",
    "batch_mean_pass_rate",
    "batch_mean_p2value",
    "batch_distinct",
)


@dataclass(frozen=True)
class AblationSettings:
    """Arms, seeds (≥ 3 for a meaningful CI), the training budget (examples drawn per fit, default the run's
    ``batch_size``), the trainer and the CI level.

    ``priority_floor`` is the replay ε of every arm (unless the run's own is higher): without it an arm whose score
    is zero for every candidate (pass rate only, when nothing passes) could draw nothing; with it that arm
    degenerates to uniform, which is what its scores say.
    """

    arms: tuple[Arm, ...] = DEFAULT_ARMS
    seeds: tuple[int, ...] = (0, 1, 2)
    budget: int | None = None
    trainer: TrainerKind = TrainerKind.LOCAL
    level: float = 0.95
    priority_floor: float = 1e-6

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "arms", tuple(Arm(a) for a in self.arms))
        except ValueError:
            raise ValueError(f"arms: choose among {', '.join(a.value for a in Arm)}; got {self.arms}") from None
        object.__setattr__(self, "trainer", TrainerKind(self.trainer))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        if not self.arms or len(set(self.arms)) != len(self.arms):
            raise ValueError(f"arms: give at least one arm, each once; got {[a.value for a in self.arms]}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: give at least one seed, each once (3 or more for a CI); got {self.seeds}")
        if self.budget is not None and self.budget < 1:
            raise ValueError(f"budget: examples per fit must be >= 1, got {self.budget}")
        if not 0.0 < self.level < 1.0:
            raise ValueError(f"level: the CI level must be in (0, 1), got {self.level}")
        if not 0.0 <= self.priority_floor < 1.0:
            raise ValueError(f"priority_floor: the replay ε must be in [0, 1), got {self.priority_floor}")


def arm_replay_config(arm: Arm, base: ReplayConfig, seed: int, floor: float = 0.0) -> ReplayConfig:
    """The replay buffer of ``arm`` (the filter arm draws uniformly from its passing candidates)."""
    strategy, alpha = {
        Arm.P2VALUE_POWER: (Strategy.POWER, base.alpha),
        Arm.P2VALUE_RANK: (Strategy.RANK, base.alpha),
        Arm.PASS_RATE_ONLY: (Strategy.PASS_RATE, 0.0),
        Arm.POSSIBILITY_ONLY: (Strategy.POSSIBILITY, 1.0),
        Arm.UNIFORM: (Strategy.UNIFORM, base.alpha),
        Arm.NO_REPLAY: (Strategy.UNIFORM, base.alpha),
        Arm.REFERENCES_ONLY: (Strategy.UNIFORM, base.alpha),
    }[arm]
    return replace(base, strategy=strategy, alpha=alpha, seed=seed, epsilon=max(base.epsilon, floor))


@dataclass
class ArmDraw:
    """The batch an arm drew, and from which pool."""

    arm: Arm
    seed: int
    pool_digest: str
    status: ArmStatus
    experiences: list[Experience] = field(default_factory=list)
    buffer_size: int = 0

    def batch_metrics(
        self, alpha: float, possibility: PossibilityMode | str = PossibilityMode.GEOMETRIC
    ) -> dict[str, float]:
        """The drawn batch's make-up; its P2Value on the run's scale (α and possibility mode), whatever the arm's."""
        if not self.experiences:
            return {}
        n = len(self.experiences)
        return {
            "batch_mean_pass_rate": sum(e.pass_rate or 0.0 for e in self.experiences) / n,
            "batch_mean_p2value": sum(scored(e, alpha, possibility)[1] for e in self.experiences) / n,
            "batch_fully_passing": sum(1 for e in self.experiences if e.passed) / n,
            "batch_distinct": float(len({(e.problem_id, e.code) for e in self.experiences})),
        }


def draw_batch(
    arm: Arm,
    pool: CandidatePool,
    *,
    budget: int,
    base: ReplayConfig,
    seed: int,
    floor: float = 0.0,
) -> ArmDraw:
    """Fill the arm's buffer from ``pool`` and draw ``budget`` examples (with replacement, as BTP does)."""
    experiences = pool.experiences(sources=("reference",) if arm is Arm.REFERENCES_ONLY else None)
    if arm is Arm.REFERENCES_ONLY and not experiences:
        return ArmDraw(arm=arm, seed=seed, pool_digest=pool.digest, status=ArmStatus.NO_DATA)
    if arm is Arm.NO_REPLAY:
        experiences = [e for e in experiences if e.passed]
        if not experiences:
            return ArmDraw(arm=arm, seed=seed, pool_digest=pool.digest, status=ArmStatus.NO_DATA)
    buffer = ReplayBuffer(arm_replay_config(arm, base, seed, floor))
    buffer.add(experiences)
    _, drawn = buffer.sample(budget, True)
    return ArmDraw(
        arm=arm, seed=seed, pool_digest=pool.digest, status=ArmStatus.OK, experiences=drawn, buffer_size=len(buffer)
    )


def aggregate(rows: Sequence[dict[str, Any]], arms: Sequence[Arm], level: float) -> dict[str, Any]:
    """Mean ± CI per arm and metric over the seeds whose arm ran (``status == ok``)."""
    out: dict[str, Any] = {}
    for arm in arms:
        ok = [r for r in rows if r["arm"] == arm.value and r["status"] == ArmStatus.OK.value]
        metrics = {}
        for metric in METRICS:
            values = [r["metrics"][metric] for r in ok if r["metrics"].get(metric) is not None]
            if values:
                metrics[metric] = mean_ci(values, level).to_dict()
        statuses = sorted({r["status"] for r in rows if r["arm"] == arm.value})
        out[arm.value] = {"seeds_ok": len(ok), "statuses": statuses, "metrics": metrics}
    return out


class AblationStudy:
    """Runs every arm × seed on one pool with one trainer; evaluation through the study's services."""

    def __init__(
        self,
        config: ExperimentConfig,
        settings: AblationSettings,
        *,
        services: Services,
        trainer: Trainer,
        train_problems: Sequence[Problem],
        eval_problems: Sequence[Problem],
        output_dir: Path,
    ) -> None:
        self.config = config
        self.settings = settings
        self.services = services
        self.trainer = trainer
        self.train_problems = list(train_problems)
        self.eval_problems = list(eval_problems)
        self.output_dir = output_dir
        self.cost = CostRecord()

    @property
    def budget(self) -> int:
        return self.settings.budget or self.config.batch_size

    def build_pool(self) -> CandidatePool:
        pool, collected = build_pool(
            self.services.source,
            self.services.executor,
            self.train_problems,
            self.config.generation,
            batch_size=self.config.problem_batch_size,
        )
        collected.cost(self.cost)
        pool.save(self.output_dir / POOL_FILE)
        return pool

    def run(self, pool: CandidatePool | None = None) -> dict[str, Any]:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        seeds = {"sampling": self.config.seed, "arm_seeds": list(self.settings.seeds)}
        write_json(
            self.output_dir / RUN_INFO, run_record(self.config, seeds, {"ablation": settings_dict(self.settings)})
        )
        started = time.perf_counter()
        pool = pool or self.build_pool()
        base_eval = self._evaluate(None) if self.eval_problems else None
        rows = []
        tracking = study_tracking(self.config.tracking, self.output_dir)
        for seed in self.settings.seeds:
            for arm in self.settings.arms:
                rows.append(self._run_arm(arm, seed, pool, base_eval))
                write_json(self.output_dir / "ablation_rows.json", rows)  # progress survives a crash
                self._track(tracking, rows[-1])
        results = {
            "experiment": "ablation",
            "model": self.config.sampling.model,
            "dataset": self.config.dataset,
            "settings": settings_dict(self.settings),
            "budget": self.budget,
            "seeds": seeds,
            "train_problems": [p.task_id for p in self.train_problems],
            "eval_problems": [p.task_id for p in self.eval_problems],
            "pool": pool.summary(),
            "pool_file": POOL_FILE,
            "base_eval": base_eval,
            "rows": rows,
            "aggregate": aggregate(rows, self.settings.arms, self.settings.level),
            "metrics": list(METRICS),
            "wall_s": time.perf_counter() - started,
            "cost": self.cost.to_dict(),
        }
        write_json(self.output_dir / RESULTS_FILE, results)
        return results

    def _run_arm(self, arm: Arm, seed: int, pool: CandidatePool, base_eval: dict[str, Any] | None) -> dict[str, Any]:
        name = f"{arm.value}-seed{seed}"
        draw = draw_batch(
            arm,
            pool,
            budget=self.budget,
            base=self.config.replay,
            seed=seed,
            floor=self.settings.priority_floor,
        )
        row: dict[str, Any] = {
            "arm": arm.value,
            "seed": seed,
            "status": draw.status.value,
            "pool_digest": draw.pool_digest,
            "buffer_size": draw.buffer_size,
            "metrics": draw.batch_metrics(self.config.replay.alpha, self.config.replay.possibility),
        }
        if draw.status is ArmStatus.NO_DATA:
            row["note"] = (
                "the pool holds no reference solution: the references-only arm has nothing to train on"
                if arm is Arm.REFERENCES_ONLY
                else "no candidate in the pool passes every test: the filter arm has nothing to train on"
            )
            logger.warning("ablation %s: %s", name, row["note"])
            return row
        try:
            train = self.trainer.train(draw.experiences, seed=seed, output_dir=self.output_dir / "adapters" / name)
            self.cost.add_phase("train", train.wall_s)
            row["train"] = train.to_dict()
            row["metrics"]["final_loss"] = train.final_loss
            if self.eval_problems:
                self.services.model.load_adapter(str(train.adapter_dir), f"ablation-{name}")
                evaluation = self._evaluate(base_eval["accuracy"] if base_eval else None)
                row["eval"] = evaluation
                row["metrics"]["eval_pass_at_1"] = evaluation["greedy_pass_at_1"]
                row["metrics"]["eval_mean_pass_rate"] = evaluation["greedy_mean_pass_rate"]
        except Exception as exc:  # one failed arm is recorded and the study goes on
            logger.exception("ablation %s failed", name)
            row["status"] = ArmStatus.FAILED.value
            row["error"] = f"{type(exc).__name__}: {exc}"
        logger.info("ablation %s: %s", name, {k: round(v, 4) for k, v in row["metrics"].items()})
        return row

    def _track(self, tracking: TrackingConfig, row: dict[str, Any]) -> None:
        """The arm as its own tracked run in the study's experiment."""
        if not tracking.backends:
            return
        params = {"study": "ablation", "arm": row["arm"], "seed": row["seed"], "status": row["status"]}
        params |= {"budget": self.budget, "pool_digest": row["pool_digest"]}
        params |= flatten_params({"replay": to_dict(self.config.replay), "training": to_dict(self.config.training)})
        log_study_run(
            tracking,
            run_name=f"ablation-{row['arm']}-seed{row['seed']}",
            group="ablation",
            store_dir=self.output_dir,
            params=params,
            metrics=flatten_metrics({k: row[k] for k in ("metrics", "eval", "buffer_size") if k in row}),
        )

    def _evaluate(self, baseline_accuracy: float | None) -> dict[str, Any]:
        summary, collected = evaluate_greedy(
            self.services.model,
            self.services.executor,
            self.eval_problems,
            self.config,
            baseline_accuracy=baseline_accuracy,
        )
        self.cost.add_phase("eval", summary["wall_s"])
        self.cost.add_tokens(tokens_out=collected.tokens_generated)
        return summary


def settings_dict(settings: AblationSettings) -> dict[str, Any]:
    return {
        "arms": [a.value for a in settings.arms],
        "seeds": list(settings.seeds),
        "budget": settings.budget,
        "trainer": settings.trainer.value,
        "level": settings.level,
        "priority_floor": settings.priority_floor,
    }
