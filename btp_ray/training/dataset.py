"""Supervised fine-tuning data from replay samples: each ``TrainingExample`` (prompt + program) becomes token ids with
the prompt masked out of the loss, in the same form the sampler asked the model.

Prompt formats: for an instruct model with a chat template the user turn is the prompt and the assistant turn is the
program in a ```python fence (loss on the assistant turn, its end-of-turn token included); for a raw completion model
the text is prompt + completion + EOS (loss on completion + EOS). Sequences longer than ``max_seq_len`` are truncated
(counted and logged): the prompt loses its start (the part farthest from the answer) down to half the budget, then
the program loses its end.

Weighting: ``weighting="none"`` (the default, as in the paper) trains plainly on the sampled batch, since the
P2Value priority already decided what was sampled; ``"priority"`` additionally scales each example's mean token loss
by ``weight / mean(weight)`` (the mean over the whole batch), for replay samplers that draw uniformly and pass
priorities.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from btp_ray.training.config import LearnerError, PromptFormat, TrainingConfig

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


@dataclass(frozen=True)
class TrainingExample:
    """One replay sample to learn from. Give ``program`` (the full program the sampler extracted) or ``completion``
    (the text that continues ``prompt``); ``weight`` is its priority, used only with ``weighting="priority"``."""

    prompt: str
    program: str | None = None
    completion: str | None = None
    weight: float = 1.0
    problem_id: str | None = None
    candidate_id: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            raise ValueError(f"prompt: must be a string, got {type(self.prompt).__name__}")
        if not (self.weight >= 0.0):
            raise ValueError(f"weight: must be >= 0, got {self.weight}")

    @property
    def has_target(self) -> bool:
        return bool((self.program or "").strip() or (self.completion or "").strip())

    def chat_answer(self) -> str:
        """The assistant turn: the program (or prompt + completion) in a python fence, as the sampler extracts it."""
        code = self.program if (self.program or "").strip() else self.prompt + (self.completion or "")
        return f"```python\n{code.strip()}\n```"

    def raw_completion(self) -> str:
        """The text that follows the prompt: the completion, or the program without a leading copy of the prompt."""
        if (self.completion or "").strip():
            return self.completion or ""
        program = self.program or ""
        return program[len(self.prompt) :] if self.prompt and program.startswith(self.prompt) else program


@dataclass(frozen=True)
class SFTFeature:
    """Token ids of one example and its labels (``IGNORE_INDEX`` on prompt positions)."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    weight: float

    @property
    def num_target_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


@dataclass(frozen=True)
class SFTDataset:
    """The tokenized batch plus what happened while building it."""

    features: tuple[SFTFeature, ...]
    prompt_format: PromptFormat
    num_truncated: int
    num_skipped: int
    data_hash: str
    pad_token_id: int

    def __len__(self) -> int:
        return len(self.features)

    @property
    def num_target_tokens(self) -> int:
        return sum(feature.num_target_tokens for feature in self.features)

    @property
    def mean_weight(self) -> float:
        return sum(feature.weight for feature in self.features) / len(self.features)


def resolve_prompt_format(prompt_format: PromptFormat | str, tokenizer: Any) -> PromptFormat:
    """``auto`` → chat if the tokenizer has a chat template, else raw; ``chat`` without a template is refused."""
    prompt_format = PromptFormat(prompt_format)
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if prompt_format is PromptFormat.AUTO:
        return PromptFormat.CHAT if has_template else PromptFormat.RAW
    if prompt_format is PromptFormat.CHAT and not has_template:
        raise LearnerError("prompt_format='chat' but the tokenizer has no chat template: use 'raw' or 'auto'")
    return prompt_format


def examples_hash(examples: Sequence[TrainingExample]) -> str:
    """A stable SHA-256 of the examples' content (prompt, program, completion, weight), in order."""
    digest = hashlib.sha256()
    for example in examples:
        record = [example.prompt, example.program, example.completion, float(example.weight)]
        digest.update(json.dumps(record, ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _encode(tokenizer: Any, text: str, *, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _chat_pair(tokenizer: Any, example: TrainingExample, system_prompt: str | None) -> tuple[list[int], list[int]]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": example.prompt})
    prompt_text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    messages.append({"role": "assistant", "content": example.chat_answer()})
    full_text = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full_text.startswith(prompt_text):
        raise LearnerError(
            "the chat template renders the conversation so that the generation prompt is not a prefix of the full "
            "dialogue; the prompt cannot be masked reliably: use prompt_format='raw'"
        )
    # Tokenized separately, as in generation: the sampler feeds exactly the prompt tokens and the model continues.
    return _encode(tokenizer, prompt_text, special=False), _encode(
        tokenizer, full_text[len(prompt_text) :], special=False
    )


def _raw_pair(tokenizer: Any, example: TrainingExample) -> tuple[list[int], list[int]]:
    prompt_ids = _encode(tokenizer, example.prompt, special=True) if example.prompt else []
    target_ids = _encode(tokenizer, example.raw_completion(), special=False)
    if target_ids and tokenizer.eos_token_id is not None:
        target_ids.append(int(tokenizer.eos_token_id))
    return prompt_ids, target_ids


def _truncate(prompt_ids: list[int], target_ids: list[int], max_len: int) -> tuple[list[int], list[int]]:
    keep_prompt = min(len(prompt_ids), max(max_len - len(target_ids), max_len // 2))
    prompt_ids = prompt_ids[len(prompt_ids) - keep_prompt :]
    return prompt_ids, target_ids[: max_len - keep_prompt]


def build_sft_dataset(
    examples: Sequence[TrainingExample],
    tokenizer: Any,
    *,
    max_seq_len: int,
    prompt_format: PromptFormat | str = PromptFormat.AUTO,
    system_prompt: str | None = None,
) -> SFTDataset:
    """Tokenize ``examples`` for SFT with the prompt masked. Raises ``LearnerError`` for an empty batch or one whose
    examples carry no program (only prompts)."""
    if not examples:
        raise LearnerError("empty training batch: the replay buffer returned no examples to learn from")
    bad = [i for i, example in enumerate(examples) if not isinstance(example, TrainingExample)]
    if bad:
        raise LearnerError(f"examples {bad[:5]} are not TrainingExample instances")
    fmt = resolve_prompt_format(prompt_format, tokenizer)
    with_target = [example for example in examples if example.has_target]
    if not with_target:
        raise LearnerError(
            f"the batch has {len(examples)} examples but none carries a program or completion (only prompts): "
            "nothing to learn"
        )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise LearnerError("the tokenizer has neither a pad nor an EOS token to pad batches with")
    features: list[SFTFeature] = []
    truncated = 0
    skipped = len(examples) - len(with_target)
    for example in with_target:
        if fmt is PromptFormat.CHAT:
            prompt_ids, target_ids = _chat_pair(tokenizer, example, system_prompt)
        else:
            prompt_ids, target_ids = _raw_pair(tokenizer, example)
        if not target_ids:
            skipped += 1
            continue
        if len(prompt_ids) + len(target_ids) > max_seq_len:
            truncated += 1
            prompt_ids, target_ids = _truncate(prompt_ids, target_ids, max_seq_len)
        features.append(
            SFTFeature(
                input_ids=tuple(prompt_ids + target_ids),
                labels=tuple([IGNORE_INDEX] * len(prompt_ids) + target_ids),
                weight=float(example.weight),
            )
        )
    if not features:
        raise LearnerError("no example kept a program token after tokenization: nothing to learn")
    if truncated:
        logger.warning("truncated %d of %d training examples to max_seq_len=%d", truncated, len(features), max_seq_len)
    if skipped:
        logger.warning("skipped %d training examples without a program", skipped)
    return SFTDataset(
        features=tuple(features),
        prompt_format=fmt,
        num_truncated=truncated,
        num_skipped=skipped,
        data_hash=examples_hash(examples),
        pad_token_id=int(pad_id),
    )


def collate(features: Sequence[SFTFeature], pad_token_id: int) -> dict[str, Any]:
    """Right-pad a micro-batch into tensors: ``input_ids``, ``attention_mask``, ``labels``, ``weights``."""
    import torch

    width = max(len(feature.input_ids) for feature in features)
    input_ids = torch.full((len(features), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(features), width), dtype=torch.long)
    for row, feature in enumerate(features):
        length = len(feature.input_ids)
        input_ids[row, :length] = torch.tensor(feature.input_ids)
        labels[row, :length] = torch.tensor(feature.labels)
        attention_mask[row, :length] = 1
    weights = torch.tensor([feature.weight for feature in features], dtype=torch.float32)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "weights": weights}


def build_sft_dataset_for(config: TrainingConfig, examples: Sequence[TrainingExample], tokenizer: Any) -> SFTDataset:
    """:func:`build_sft_dataset` with the length, prompt format and system prompt of ``config``."""
    return build_sft_dataset(
        examples,
        tokenizer,
        max_seq_len=config.max_seq_len,
        prompt_format=config.prompt_format,
        system_prompt=config.system_prompt,
    )
