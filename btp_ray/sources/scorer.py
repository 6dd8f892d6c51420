"""Possibility for programs that arrive without log-probs: the teacher-forced mean token log-prob of the program
under the model being trained (base model plus its current LoRA adapter), in the very form the learner trains on —
the problem's prompt as the user turn (system prompt included) and the program as the assistant's fenced answer, or
prompt + completion + EOS for a raw completion model. So the possibility P2Value ranks such a program by is the
likelihood the learner will raise."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from btp_ray.data.types import Problem
from btp_ray.sampling.types import GenerationParams


@dataclass(frozen=True)
class ProgramScore:
    """A program's teacher-forced log-prob summary: mean per target token, how many tokens, and who scored it."""

    mean_logprob: float
    num_tokens: int
    scored_by: str

    @property
    def possibility(self) -> float:
        return math.exp(self.mean_logprob)


class PossibilityScorer:
    """Scores programs under a local model (transformers), following the adapter the pipeline hands it."""

    def __init__(self, model: str, *, device: str = "auto", dtype: str = "auto", max_seq_len: int = 4096) -> None:
        from btp_ray.sampling.config import SamplerConfig
        from btp_ray.sampling.hf import HFSampler

        self._hf = HFSampler(SamplerConfig(model=model, backend="hf", device=device, dtype=dtype, max_model_len=None))
        self.max_seq_len = max_seq_len

    @property
    def identity(self) -> str:
        """``hf:<model>`` or ``hf:<model>+<adapter>``: recorded with every score."""
        return str(self._hf.identity)

    @property
    def tokenizer(self) -> Any:
        return self._hf.tokenizer

    def load_adapter(self, path: str, name: str) -> None:
        self._hf.load_adapter(path, name)

    def score(
        self, problems: Sequence[Problem], programs: Sequence[str], params: GenerationParams
    ) -> list[ProgramScore]:
        """One score per ``(problem, program)`` pair (programs must be non-empty)."""
        from btp_ray.sampling.base import user_message
        from btp_ray.training.config import PromptFormat as TrainingPromptFormat
        from btp_ray.training.dataset import TrainingExample, build_sft_dataset, resolve_prompt_format
        from btp_ray.training.modeling import program_logprobs

        if len(problems) != len(programs):
            raise ValueError(f"score: {len(problems)} problems for {len(programs)} programs")
        if not programs:
            return []
        if any(not p.strip() for p in programs):
            raise ValueError("score: an empty program has no tokens to score")
        requested = TrainingPromptFormat(params.prompt_format.value)
        chat = resolve_prompt_format(requested, self.tokenizer) is TrainingPromptFormat.CHAT
        examples = [
            TrainingExample(prompt=user_message(problem) if chat else problem.prompt, program=program)
            for problem, program in zip(problems, programs, strict=True)
        ]
        dataset = build_sft_dataset(
            examples,
            self.tokenizer,
            max_seq_len=self.max_seq_len,
            prompt_format=TrainingPromptFormat.CHAT if chat else TrainingPromptFormat.RAW,
            system_prompt=params.system_prompt if chat else None,
        )
        if len(dataset.features) != len(examples):
            raise RuntimeError(f"score: {len(examples)} programs gave {len(dataset.features)} features")
        sums = program_logprobs(self._hf.model, dataset.features, self.tokenizer.pad_token_id)
        scorer = self.identity
        return [
            ProgramScore(
                mean_logprob=total / feature.num_target_tokens, num_tokens=feature.num_target_tokens, scored_by=scorer
            )
            for total, feature in zip(sums, dataset.features, strict=True)
        ]
