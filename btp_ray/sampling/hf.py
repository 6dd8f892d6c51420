"""The transformers backend: ``generate`` for beam search (deterministic), sampling and greedy decoding, with every
returned sequence's per-token log-probs recomputed exactly by one teacher-forced forward pass.

The original suite's two defects are avoided by construction: beam search always runs with ``do_sample=False``, and
possibility is ``exp(mean log-prob)`` of the generated tokens from the forward pass, not HF's already
length-normalised ``sequences_scores`` divided by the length again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from btp_ray.data.types import Problem
from btp_ray.models import local_model_path
from btp_ray.sampling.base import (
    LocalPromptRenderer,
    RenderedPrompt,
    Sampler,
    candidate_from_tokens,
    eos_token_ids,
)
from btp_ray.sampling.config import Backend, SamplerConfig
from btp_ray.sampling.types import (
    Candidate,
    GenerationParams,
    SamplerConfigError,
    SamplerError,
    SamplerIdentity,
    SamplingStrategy,
    rank_candidates,
)

logger = logging.getLogger(__name__)


def _torch_dtype(name: str, device: str) -> Any:
    import torch

    if name == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, name)


def teacher_forced_logprobs(model: Any, prompt_ids: Sequence[int], continuations: Sequence[Sequence[int]]) -> list:
    """Log-prob of each continuation token given the prompt and the tokens before it, for several continuations
    of one prompt in a single batched forward pass (right padding never influences earlier positions)."""
    import torch

    if not continuations:
        return []
    device = next(model.parameters()).device
    prompt_len = len(prompt_ids)
    longest = max(len(c) for c in continuations)
    if longest == 0:
        return [[] for _ in continuations]
    rows = [list(prompt_ids) + list(c) + [0] * (longest - len(c)) for c in continuations]
    input_ids = torch.tensor(rows, dtype=torch.long, device=device)
    attention = torch.tensor(
        [[1] * (prompt_len + len(c)) + [0] * (longest - len(c)) for c in continuations], dtype=torch.long, device=device
    )
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention).logits
    # Position t predicts token t+1: the continuation's tokens are predicted from positions prompt_len-1 onward.
    predicting = logits[:, prompt_len - 1 : prompt_len - 1 + longest, :].float()
    logprobs = torch.log_softmax(predicting, dim=-1)
    targets = input_ids[:, prompt_len : prompt_len + longest].unsqueeze(-1)
    picked = logprobs.gather(-1, targets).squeeze(-1)
    return [picked[i, : len(c)].tolist() for i, c in enumerate(continuations)]


class HFSampler(Sampler):
    """transformers ``generate`` on a local model (hub id, local folder, or the embedded SmolLM2), PEFT adapters."""

    def __init__(self, config: SamplerConfig, *, model: Any = None, tokenizer: Any = None) -> None:
        spec = config.model_spec()
        if spec.kind.is_api:
            raise SamplerConfigError(f"HFSampler needs a local model, got the API model {config.model!r}")
        if config.resolved_beam_search(Backend.HF) != "native":
            raise SamplerConfigError(
                "SamplerConfig.beam_search='btp' runs on vLLM engines: use backend='vllm', or beam_search='auto' "
                "for transformers' own beam search"
            )
        self.config = config
        self.device = config.resolved_device()
        self._model_path = local_model_path(spec) if model is None else config.model
        self._adapter: str | None = None
        self._adapters: dict[str, str] = {}
        if model is None or tokenizer is None:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(self._model_path)
            model = AutoModelForCausalLM.from_pretrained(
                self._model_path, dtype=_torch_dtype(config.dtype, self.device)
            )
            model.to(self.device)
        model.eval()
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.model = model
        self.tokenizer = tokenizer
        self.renderer = LocalPromptRenderer(tokenizer)
        self._eos_ids = eos_token_ids(getattr(model, "generation_config", None), tokenizer)
        self._generated_tokens = 0
        logger.info("HFSampler ready: %s on %s", self._model_path, self.device)

    @property
    def identity(self) -> SamplerIdentity:
        return SamplerIdentity(backend="hf", model=self.config.model, adapter=self._adapter)

    def __repr__(self) -> str:
        return f"HFSampler(model={self.config.model!r}, device={self.device!r}, adapter={self._adapter!r})"

    def usage(self) -> dict[str, Any]:
        """Tokens generated so far and where the model runs (``cuda:0`` under a GPU actor, ``cpu`` otherwise)."""
        return {"generated_tokens": self._generated_tokens, "device": str(self.model.device)}

    def load_adapter(self, path: str, name: str) -> None:
        """Load a PEFT LoRA adapter folder and make it active; the base weights stay in memory untouched."""
        from peft import PeftModel

        try:
            if isinstance(self.model, PeftModel):
                if name not in self.model.peft_config:
                    self.model.load_adapter(path, adapter_name=name)
                self.model.set_adapter(name)
            else:
                self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name)
        except (OSError, ValueError) as exc:
            raise SamplerError(f"cannot load adapter {name!r} from {path}: {exc}") from exc
        self.model.eval()
        self._adapters[name] = path
        self._adapter = name
        logger.info("HFSampler serves adapter %s from %s", name, path)

    def generate(self, problems: Sequence[Problem], params: GenerationParams) -> list[list[Candidate]]:
        results: list[list[Candidate]] = []
        batch = self.config.hf_batch_size
        for start in range(0, len(problems), batch):
            chunk = list(problems[start : start + batch])
            rendered = [self.renderer.render(p, params) for p in chunk]
            results.extend(self._generate_batch(chunk, rendered, params))
        return results

    def _generation_kwargs(self, params: GenerationParams) -> dict[str, Any]:
        common: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens,
            "num_return_sequences": params.num_candidates,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": sorted(self._eos_ids),
        }
        if params.strategy is SamplingStrategy.BEAM:
            return {
                **common,
                "do_sample": False,
                "num_beams": params.num_candidates,
                "length_penalty": params.length_penalty,
                "early_stopping": True,
            }
        if params.strategy is SamplingStrategy.GREEDY:
            return {**common, "do_sample": False, "num_beams": 1}
        return {
            **common,
            "do_sample": True,
            "num_beams": 1,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": 0,
        }

    def _generate_batch(
        self, problems: list[Problem], rendered: list[RenderedPrompt], params: GenerationParams
    ) -> list[list[Candidate]]:
        import torch

        if params.strategy.samples and params.seed is not None:
            torch.manual_seed(params.seed)
        width = max(len(r.token_ids) for r in rendered)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(r.token_ids)) + list(r.token_ids) for r in rendered])
        attention = torch.tensor([[0] * (width - len(r.token_ids)) + [1] * len(r.token_ids) for r in rendered])
        with torch.no_grad():
            output = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention.to(self.device),
                **self._generation_kwargs(params),
            )
        sequences = output.sequences if hasattr(output, "sequences") else output
        generated = sequences[:, width:].tolist()
        k = params.num_candidates
        results = []
        for index, (problem, prompt) in enumerate(zip(problems, rendered, strict=True)):
            continuations = [self._strip_padding(row) for row in generated[index * k : (index + 1) * k]]
            logprobs = teacher_forced_logprobs(self.model, prompt.token_ids, continuations)
            self._generated_tokens += sum(len(c) for c in continuations)
            candidates = [
                candidate_from_tokens(
                    problem,
                    prompt,
                    tokens,
                    token_logprobs,
                    eos_ids=self._eos_ids,
                    decode=self._decode,
                    identity=self.identity,
                    params=params,
                    metadata=_metadata(params),
                )
                for tokens, token_logprobs in zip(continuations, logprobs, strict=True)
            ]
            results.append(rank_candidates(candidates))
        return results

    def _strip_padding(self, row: list[int]) -> list[int]:
        """Generated tokens up to and including the first EOS; the rest is padding."""
        for position, token in enumerate(row):
            if token in self._eos_ids:
                return row[: position + 1]
        return row

    def _decode(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)


def _metadata(params: GenerationParams) -> dict[str, Any]:
    if params.strategy is SamplingStrategy.BEAM:
        return {"strategy": params.strategy.value, "beam_search": "native"}
    return {"strategy": params.strategy.value}
