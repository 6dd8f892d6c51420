"""The experiment config: one typed, validated object for a whole BTP run, nesting each role's own config
(sampling, generation, execution, replay, training) under the run-level settings (mode, dataset, sizes, output).

Built from defaults ← a YAML file ← CLI flags (see :mod:`btp_ray.cli`); written back as the run's ``config.yaml``.
No secret is ever part of it: API keys stay in the environment (``sampling.api_key_env`` names the variable).
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from btp_ray.config_io import ConfigError, from_dict
from btp_ray.data import DATASETS
from btp_ray.execution.config import SandboxConfig
from btp_ray.models import DEEPSEEK_API_BASE, ModelKind, UnknownModelError, resolve_model
from btp_ray.replay.config import ReplayConfig
from btp_ray.sampling.config import SamplerConfig
from btp_ray.sampling.types import DEFAULT_SYSTEM_PROMPT, GenerationParams
from btp_ray.tracking.config import TrackingConfig
from btp_ray.training.config import TrainingConfig


class Mode(str, enum.Enum):
    """The original suite's five BTP modes."""

    BTP_ONLY = "btp_only"  # local model: sample, test, fill the buffer, report; no fine-tuning
    FINETUNE = "finetune"  # local source samples, local target fine-tuned (source = target: self-improvement)
    OPENAI = "openai"  # OpenAI API samples (no fine-tuning)
    DEEPSEEK = "deepseek"  # DeepSeek API samples (no fine-tuning)
    HYBRID = "hybrid"  # API source samples (or existing programs: btp_ray.sources), local target fine-tuned

    @property
    def trains(self) -> bool:
        return self in (Mode.FINETUNE, Mode.HYBRID)

    @property
    def source_kind(self) -> ModelKind | None:
        """The model kind the mode forces on the source, or None when the name decides."""
        return {Mode.OPENAI: ModelKind.OPENAI, Mode.DEEPSEEK: ModelKind.DEEPSEEK}.get(self)


PRESETS: dict[str, dict[str, int]] = {
    "quick": {"max_problems": 10, "num_beams": 3, "n_iterations": 1},
    "standard": {"max_problems": 50, "num_beams": 5, "n_iterations": 2},
    "full": {"max_problems": 100, "num_beams": 8, "n_iterations": 3},
}


@dataclass(frozen=True)
class ResourcesConfig:
    """How the run's actors claim Ray resources.

    Defaults fit one small machine: the sampler and the executors overlap in time and the learner runs after them,
    so they claim fractions of a CPU and leave a whole CPU for the learner's worker. On a cluster, give samplers
    GPUs (``sampler_gpus``) and pin executors to CPU nodes with ``executor_resource`` (the cluster YAMLs define a
    ``sandbox`` resource).
    """

    sampler_actors: int = 1
    sampler_cpus: float = 0.5
    sampler_gpus: float = 0.0
    num_executors: int | None = 1
    executor_cpus: float = 0.5
    executor_resource: str | None = None
    ray_num_cpus: int | None = None

    def __post_init__(self) -> None:
        if self.sampler_actors < 1:
            raise ValueError(f"sampler_actors must be >= 1, got {self.sampler_actors}")
        if self.num_executors is not None and self.num_executors < 1:
            raise ValueError(f"num_executors must be >= 1 or null (one per CPU), got {self.num_executors}")
        for name in ("sampler_cpus", "executor_cpus"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.sampler_gpus < 0:
            raise ValueError(f"sampler_gpus must be >= 0, got {self.sampler_gpus}")
        if self.ray_num_cpus is not None and self.ray_num_cpus < 1:
            raise ValueError(f"ray_num_cpus must be >= 1, got {self.ray_num_cpus}")


@dataclass(frozen=True)
class ExperimentConfig:
    """A BTP run. Defaults are the embedded CPU run (SmolLM2-135M, a few HumanEval problems, one LoRA iteration).

    ``batch_size`` is how many experiences the learner draws from the replay buffer per iteration (the original suite's
    ``--batch-size``); ``problem_batch_size`` how many problems go to the samplers at once, the unit by which
    sampling and testing overlap; ``prestart_learner`` starts each iteration's trainer workers while sampling runs,
    so their start-up is off the critical path. Evaluation uses held-out problems (``eval_fraction`` of them,
    disjoint from the training problems unless ``eval_on_train``) with greedy decoding plus ``eval_samples``
    samples for pass@k.
    """

    name: str = "btp"
    mode: Mode = Mode.FINETUNE
    dataset: str = "humaneval"
    data_path: str | None = None
    split: str | None = None
    max_problems: int = 6
    eval_fraction: float = 0.5
    eval_on_train: bool = False
    n_iterations: int = 1
    batch_size: int = 50
    problem_batch_size: int = 2
    eval_samples: int = 0
    eval_max_new_tokens: int | None = None
    prestart_learner: bool = True
    seed: int = 0
    output_dir: str | None = None
    debug: bool = False
    sampling: SamplerConfig = field(default_factory=SamplerConfig)
    generation: GenerationParams = field(default_factory=lambda: GenerationParams(num_candidates=3, max_new_tokens=256))
    execution: SandboxConfig = field(default_factory=SandboxConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    training: TrainingConfig | None = field(
        default_factory=lambda: TrainingConfig(base_model=SamplerConfig.model, system_prompt=DEFAULT_SYSTEM_PROMPT)
    )
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", Mode(self.mode))
        if not self.name or any(c in self.name for c in "/\\"):
            raise ValueError(f"name must be a non-empty string without slashes, got {self.name!r}")
        if self.dataset.lower().replace("_", "-") not in (*DATASETS, "code-contests"):
            raise ValueError(f"dataset must be one of {', '.join(DATASETS)}; got {self.dataset!r}")
        for name, minimum in (("max_problems", 1), ("n_iterations", 0), ("batch_size", 1), ("problem_batch_size", 1)):
            if getattr(self, name) < minimum:
                raise ValueError(f"{name} must be >= {minimum}, got {getattr(self, name)}")
        if self.eval_samples < 0:
            raise ValueError(f"eval_samples must be >= 0 (0 = greedy only), got {self.eval_samples}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        source = self.sampling.model_spec()
        if self.mode.source_kind is not None and _is_local_name(self.sampling.model):
            raise ValueError(
                f"mode: --mode {self.mode.value} samples from the {self.mode.source_kind.value} API, but "
                f"{self.sampling.model!r} names a local model; pass an API model (gpt-4o, deepseek-chat) with "
                "--source-model, or use --mode btp_only / finetune for local models"
            )
        if self.mode.source_kind is not None and source.kind is not self.mode.source_kind:
            raise ValueError(
                f"mode: --mode {self.mode.value} samples from the {self.mode.source_kind.value} API, but the source "
                f"model {self.sampling.model!r} is {source.kind.value}; pass an API model name with --source-model"
            )
        if source.kind is ModelKind.PROGRAMS and self.mode is not Mode.HYBRID:
            raise ValueError(
                f"mode: the source {self.sampling.model!r} offers existing programs, not a model: fine-tune a target "
                "on them with --mode hybrid (the default when --target-model is given) and --target-model"
            )
        if self.mode is Mode.HYBRID and source.kind is ModelKind.LOCAL:
            raise ValueError(
                f"mode: --mode hybrid samples from an API model, but {self.sampling.model!r} is a local model; "
                "use --mode finetune for a local source, or pass an API model (gpt-4o, deepseek-chat)"
            )
        if self.mode in (Mode.BTP_ONLY, Mode.FINETUNE) and source.kind.is_api:
            raise ValueError(
                f"mode: --mode {self.mode.value} needs a local source model, but {self.sampling.model!r} is an API "
                "model; use --mode openai/deepseek (sampling only) or --mode hybrid (API sampling + local fine-tuning)"
            )
        if self.mode.trains:
            if self.training is None:
                raise ValueError(
                    f"training: --mode {self.mode.value} fine-tunes a local target: pass --target-model "
                    "(a hub id, local path or alias such as smollm2-135m)"
                )
            target = resolve_model(self.training.base_model)
            if target.kind.is_api:
                raise ValueError(
                    f"training.base_model: the target {self.training.base_model!r} is an API model and cannot be "
                    "fine-tuned here; pass a local model with --target-model"
                )
        elif self.replay.rescore_after_train:
            raise ValueError(
                f"replay.rescore_after_train: --mode {self.mode.value} trains no adapter to re-score the buffer "
                "under; drop --rescore-after-train or pick a training mode (finetune, hybrid)"
            )

    @property
    def trains(self) -> bool:
        return self.mode.trains and self.n_iterations > 0

    def api_key_env(self) -> str | None:
        """The environment variable the source's API key is read from (None for local sources)."""
        return self.sampling.key_env_name() if self.sampling.model_spec().kind.is_api else None

    def missing_api_key(self) -> str | None:
        """The variable name when an API source has no key in the environment, else None."""
        variable = self.api_key_env()
        if variable is not None and not os.environ.get(variable):
            return variable
        return None


def _infer_mode(source: str, training: Any) -> Mode:
    """No ``--mode``: an API source samples through its API, and fine-tunes a local target when one is given
    (hybrid); a local source fine-tunes itself or the given target (finetune)."""
    try:
        kind = resolve_model(source).kind
    except UnknownModelError:
        return Mode.FINETUNE  # the config's own check reports the name
    if kind is ModelKind.PROGRAMS:
        return Mode.HYBRID
    if not kind.is_api:
        return Mode.FINETUNE
    if isinstance(training, Mapping) and training.get("base_model"):
        return Mode.HYBRID
    return Mode.DEEPSEEK if kind is ModelKind.DEEPSEEK else Mode.OPENAI


def _is_local_name(name: str) -> bool:
    try:
        return resolve_model(name).kind is ModelKind.LOCAL and "/" not in name
    except UnknownModelError:
        return False


def _fill_defaults(data: Mapping[str, Any]) -> dict[str, Any]:
    """Derive what the user left out: the target defaults to the source in fine-tuning modes (self-improvement),
    DeepSeek mode talks to DeepSeek's API, and the learner inherits the run's seed."""
    data = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in data.items()}
    sampling = data.setdefault("sampling", {})
    if "mode" not in data:
        data["mode"] = _infer_mode(sampling.get("model", SamplerConfig.model), data.get("training")).value
    mode = Mode(data["mode"]) if _is_mode(data["mode"]) else None
    if mode is Mode.DEEPSEEK and not sampling.get("api_base"):
        sampling["api_base"] = DEEPSEEK_API_BASE
    if mode is not None and mode.source_kind is not None and "model_kind" not in sampling:
        sampling["model_kind"] = mode.source_kind.value
    training = data.get("training")
    if mode is not None and mode.trains:
        sampling.setdefault("enable_lora", True)  # the source serves each new adapter when it is the target
        training = dict(training or {})
        if "base_model" not in training and mode is Mode.FINETUNE:
            training["base_model"] = sampling.get("model", SamplerConfig.model)
        training.setdefault("seed", data.get("seed", 0))
        # The learner must see the prompt the sampler used, system prompt included.
        generation = data.get("generation") or {}
        training.setdefault("system_prompt", generation.get("system_prompt", DEFAULT_SYSTEM_PROMPT))
        if generation.get("prompt_format") not in (None, "auto"):
            training.setdefault("prompt_format", generation["prompt_format"])
        data["training"] = training if "base_model" in training else None
        if data["training"] is not None and _is_program_source(sampling.get("model", "")):
            # Programs without log-probs are scored under the model being trained.
            sampling.setdefault("scorer_model", data["training"]["base_model"])
    elif mode is not None and (training is None or "base_model" not in training):
        data["training"] = None  # nothing to fine-tune in this mode
    return data


def _is_program_source(name: str) -> bool:
    try:
        return resolve_model(name).kind is ModelKind.PROGRAMS
    except UnknownModelError:
        return False


def _is_mode(value: Any) -> bool:
    try:
        Mode(value if value is not None else Mode.FINETUNE.value)
    except ValueError:
        return False
    return True


def build_experiment_config(data: Mapping[str, Any], *, source: str | None = None) -> ExperimentConfig:
    """Build and validate an :class:`ExperimentConfig` from nested plain data (YAML + overrides)."""
    try:
        return from_dict(ExperimentConfig, _fill_defaults(data))
    except ConfigError as exc:
        if source and not exc.source:
            raise ConfigError(exc.field, exc.message, source=source) from None
        raise
    except UnknownModelError as exc:
        raise ConfigError("sampling.model", str(exc), source=source) from None
