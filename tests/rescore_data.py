"""The buffer, target and adapter shared by the re-scoring tests (unit, and through the replay actor): the embedded
SmolLM2-135M as the target, a few steps of LoRA on one HumanEval reference program, and buffered programs with a
sampler's log-prob."""

from __future__ import annotations

from pathlib import Path

from btp_ray.data import load_problems
from btp_ray.data.types import Problem
from btp_ray.experiment_config import ExperimentConfig, build_experiment_config
from btp_ray.replay import Experience

SHORT_PROBLEMS = ("HumanEval/53", "HumanEval/23")  # the two shortest reference programs: cheap to score on a CPU
SAMPLER_LOGPROB = -0.05  # what the "sampler" claimed: a possibility no teacher-forced score of these programs reaches


def short_problems() -> list[Problem]:
    by_id = {problem.task_id: problem for problem in load_problems("humaneval")}
    return [by_id[task_id] for task_id in SHORT_PROBLEMS]


def rescore_config(on: bool = True) -> ExperimentConfig:
    return build_experiment_config(
        {
            "sampling": {"model": "smollm2-135m", "device": "cpu"},
            "training": {"base_model": "smollm2-135m"},
            "replay": {"rescore_after_train": on, "alpha": 0.5, "beta": 1.0},
        }
    )


def train_adapter(problem: Problem, output: Path) -> Path:
    """A LoRA adapter of SmolLM2-135M trained for three steps on ``problem``'s reference program in the learner's chat
    format, saved in ``output`` with its manifest as an iteration's output is."""
    from btp_ray.sampling.base import user_message
    from btp_ray.training import Learner, TrainingConfig, TrainingExample

    config = rescore_config()
    training = TrainingConfig(
        base_model="smollm2-135m", max_steps=3, learning_rate=5e-3, per_device_batch_size=1, max_seq_len=512,
        lora_r=8, lora_alpha=16, lora_dropout=0.0, system_prompt=config.generation.system_prompt,
    )  # fmt: skip
    example = TrainingExample(prompt=user_message(problem), program=problem.reference_program())
    Learner(training).train([example], output_dir=output)
    return output


def random_adapter(output: Path) -> Path:
    """A LoRA adapter of SmolLM2-135M whose weights are random rather than zero (PEFT's ``init_lora_weights=False``):
    the target with different weights in seconds, where training one takes minutes on a loaded CPU."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from btp_ray.models import local_model_path, resolve_model

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(local_model_path(resolve_model("smollm2-135m")))
    lora = LoraConfig(r=4, lora_alpha=1, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(output)
    return output


def buffered_programs(problems: list[Problem]) -> list[Experience]:
    """Each problem's reference program (all tests pass) and a wrong one (none pass), with the sampler's log-prob;
    plus one program of a problem the run does not know (left alone)."""
    records = []
    for problem in problems:
        tests = len(problem.tests)
        wrong = f"def {problem.entry_point}(*args):\n    return None\n"
        for code, passed in ((problem.reference_program(), True), (wrong, False)):
            records.append(
                Experience(
                    problem_id=problem.task_id, code=code, per_test=(passed,) * tests, prompt=problem.prompt,
                    token_count=40, mean_token_logprob=SAMPLER_LOGPROB,
                )
            )  # fmt: skip
    records.append(Experience(problem_id="Elsewhere/0", code="x = 1\n", per_test=(True,), mean_token_logprob=-0.5))
    return records
