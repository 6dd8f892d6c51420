"""SFT dataset building with the embedded SmolLM2 tokenizer: prompt masking (chat and raw), truncation counts,
refusal of empty and prompt-only batches, data hashing and padding."""

from __future__ import annotations

import logging

import pytest

from btp_ray.models import embedded_model_dir
from btp_ray.training import LearnerError, PromptFormat, TrainingExample, build_sft_dataset
from btp_ray.training.dataset import IGNORE_INDEX, collate, examples_hash, resolve_prompt_format

PROGRAM = "def add(a, b):\n    return a + b\n"


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_model_dir())


@pytest.fixture
def raw_tokenizer(tokenizer):
    """The same tokenizer without a chat template, as a base (completion) model has."""
    import copy

    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    return plain


def _split(feature, tokenizer):
    prompt_len = next(i for i, label in enumerate(feature.labels) if label != IGNORE_INDEX)
    prompt = tokenizer.decode(feature.input_ids[:prompt_len])
    target = tokenizer.decode([t for t in feature.labels if t != IGNORE_INDEX])
    return prompt, target, prompt_len


def test_chat_format_masks_the_user_turn_and_trains_on_the_fenced_program(tokenizer):
    example = TrainingExample(prompt="Write add(a, b).", program=PROGRAM)
    dataset = build_sft_dataset([example], tokenizer, max_seq_len=256, prompt_format="auto")
    assert dataset.prompt_format is PromptFormat.CHAT
    prompt, target, prompt_len = _split(dataset.features[0], tokenizer)
    assert prompt.endswith("<|im_start|>user\nWrite add(a, b).<|im_end|>\n<|im_start|>assistant\n")
    assert target.startswith("```python\ndef add(a, b):\n    return a + b\n```<|im_end|>")
    assert all(label == IGNORE_INDEX for label in dataset.features[0].labels[:prompt_len])
    assert dataset.features[0].labels[prompt_len:] == dataset.features[0].input_ids[prompt_len:]


def test_chat_prompt_tokens_equal_what_the_sampler_feeds(tokenizer):
    """The masked prefix must be exactly the generation prompt's tokens, so training matches sampling."""
    example = TrainingExample(prompt="Reverse a string.", program="def rev(s):\n    return s[::-1]")
    dataset = build_sft_dataset(
        [example], tokenizer, max_seq_len=256, prompt_format="chat", system_prompt="You write Python."
    )
    messages = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": example.prompt}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    expected = tokenizer(text, add_special_tokens=False)["input_ids"]
    _, _, prompt_len = _split(dataset.features[0], tokenizer)
    assert list(dataset.features[0].input_ids[:prompt_len]) == expected


def test_raw_format_trains_on_completion_plus_eos(raw_tokenizer):
    prompt = "def add(a, b):\n"
    examples = [
        TrainingExample(prompt=prompt, completion="    return a + b\n"),
        TrainingExample(prompt=prompt, program=prompt + "    return a + b\n"),  # program repeating the prompt
    ]
    dataset = build_sft_dataset(examples, raw_tokenizer, max_seq_len=128, prompt_format="auto")
    assert dataset.prompt_format is PromptFormat.RAW
    for feature in dataset.features:
        prompt_text, target, _ = _split(feature, raw_tokenizer)
        assert prompt_text == prompt
        assert target == "    return a + b\n" + raw_tokenizer.eos_token
    assert dataset.features[0] == dataset.features[1]


def test_chat_format_requires_a_template(raw_tokenizer):
    assert resolve_prompt_format("raw", raw_tokenizer) is PromptFormat.RAW
    with pytest.raises(LearnerError, match="no chat template"):
        build_sft_dataset([TrainingExample("p", PROGRAM)], raw_tokenizer, max_seq_len=64, prompt_format="chat")


def test_truncation_is_counted_and_logged(tokenizer, caplog):
    long_program = "\n".join(f"x{i} = {i}" for i in range(400))
    examples = [
        TrainingExample(prompt="Short.", program=PROGRAM),
        TrainingExample(prompt="Long one.", program=long_program),
        TrainingExample(prompt="word " * 300, program=PROGRAM),  # a prompt longer than the whole budget
    ]
    with caplog.at_level(logging.WARNING, logger="btp_ray.training.dataset"):
        dataset = build_sft_dataset(examples, tokenizer, max_seq_len=64)
    assert dataset.num_truncated == 2
    assert "truncated 2 of 3" in caplog.text
    assert len(dataset.features[0].input_ids) < 64
    for feature in dataset.features[1:]:
        assert len(feature.input_ids) == 64
        assert feature.num_target_tokens >= 1
    # the long program keeps its start and half the budget goes to the prompt's end
    prompt_text, target, prompt_len = _split(dataset.features[1], tokenizer)
    assert prompt_len == 32
    assert target.startswith("```python\nx0 = 0\nx1 = 1")
    # the over-long prompt loses its start, the short answer stays whole
    prompt_text, target, prompt_len = _split(dataset.features[2], tokenizer)
    assert prompt_text.endswith("word <|im_end|>\n<|im_start|>assistant\n")
    assert not prompt_text.startswith("<|im_start|>system")
    assert target.startswith("```python\ndef add(a, b):\n    return a + b\n```<|im_end|>")
    assert prompt_len == 64 - dataset.features[2].num_target_tokens


def test_empty_batch_is_refused(tokenizer):
    with pytest.raises(LearnerError, match="empty training batch"):
        build_sft_dataset([], tokenizer, max_seq_len=64)


def test_prompt_only_batch_is_refused(tokenizer):
    examples = [TrainingExample(prompt="a"), TrainingExample(prompt="b", program="   ", completion="")]
    with pytest.raises(LearnerError, match="only prompts"):
        build_sft_dataset(examples, tokenizer, max_seq_len=64)


def test_examples_without_program_are_skipped_and_counted(tokenizer):
    examples = [TrainingExample(prompt="a"), TrainingExample(prompt="b", program=PROGRAM)]
    dataset = build_sft_dataset(examples, tokenizer, max_seq_len=128)
    assert len(dataset) == 1
    assert dataset.num_skipped == 1


def test_non_example_items_are_refused(tokenizer):
    with pytest.raises(LearnerError, match="not TrainingExample"):
        build_sft_dataset([{"prompt": "p", "program": PROGRAM}], tokenizer, max_seq_len=64)


def test_example_validation():
    with pytest.raises(ValueError, match="weight"):
        TrainingExample(prompt="p", program=PROGRAM, weight=-1.0)
    with pytest.raises(ValueError, match="prompt"):
        TrainingExample(prompt=None, program=PROGRAM)  # type: ignore[arg-type]


def test_data_hash_is_stable_and_content_sensitive():
    first = [TrainingExample("p", PROGRAM, weight=1.0), TrainingExample("q", "x = 1")]
    same = [TrainingExample("p", PROGRAM, weight=1.0, problem_id="ignored"), TrainingExample("q", "x = 1")]
    assert examples_hash(first) == examples_hash(same)
    assert examples_hash(first) != examples_hash(first[::-1])
    assert examples_hash(first) != examples_hash([TrainingExample("p", PROGRAM, weight=2.0), first[1]])


def test_weights_and_collate(tokenizer):
    examples = [TrainingExample("p", PROGRAM, weight=3.0), TrainingExample("a longer prompt here", "y = 2", weight=1.0)]
    dataset = build_sft_dataset(examples, tokenizer, max_seq_len=128)
    assert dataset.mean_weight == 2.0
    batch = collate(dataset.features, dataset.pad_token_id)
    lengths = [len(f.input_ids) for f in dataset.features]
    assert tuple(batch["input_ids"].shape) == (2, max(lengths))
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    short = lengths.index(min(lengths))
    assert (batch["labels"][short, min(lengths) :] == IGNORE_INDEX).all()
    assert (batch["input_ids"][short, min(lengths) :] == dataset.pad_token_id).all()
    assert batch["weights"].tolist() == [3.0, 1.0]
