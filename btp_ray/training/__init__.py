"""Fine-tuning the target model on replay samples: SFT data with the prompt masked, a one-process ``Learner`` (LoRA
or full, DDP or DeepSpeed when run as a rank of a distributed job), and ``train_with_ray`` running it under Ray Train's
``TorchTrainer``. Each iteration yields a PEFT adapter folder plus ``manifest.json`` for the samplers to load."""

from btp_ray.training.config import LearnerError, PromptFormat, Strategy, TrainingConfig, Weighting
from btp_ray.training.dataset import SFTDataset, SFTFeature, TrainingExample, build_sft_dataset
from btp_ray.training.learner import Learner, adapter_name_for
from btp_ray.training.ray_learner import RayLearner, train_with_ray
from btp_ray.training.results import AdapterManifest, StepMetrics, TrainResult

__all__ = [
    "AdapterManifest",
    "Learner",
    "LearnerError",
    "PromptFormat",
    "RayLearner",
    "SFTDataset",
    "SFTFeature",
    "StepMetrics",
    "Strategy",
    "TrainResult",
    "TrainingConfig",
    "TrainingExample",
    "Weighting",
    "adapter_name_for",
    "build_sft_dataset",
    "train_with_ray",
]
