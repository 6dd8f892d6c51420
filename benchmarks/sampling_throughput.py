"""Sampling throughput of the candidate strategies BTP can use, in one process on the same HumanEval prompts:

* ``hf-beam``: transformers' ``generate(num_beams=k)`` (HFSampler, the baseline);
* ``vllm-native-beam``: vLLM's own ``LLM.beam_search`` (VLLMSampler, ``beam_search="native"``);
* ``vllm-btp-beam``: btp-ray's beam search on the vLLM engine (VLLMSampler, ``beam_search="btp"``, the default);
* ``vllm-sample-and-rank``: k samples ranked by mean log-prob (``strategy="sample_and_rank"``): not a beam search;
* ``hf-sample-and-rank``: the same on transformers (only when named in ``--runs``).

For each: tokens/s and candidates/s of one timed call after a warm-up call, the mean pass rate of its candidates
(every candidate run against the problem's tests in btp-ray's sandbox), and for the vLLM beam searches how many
problems return the same top-k token sequences as ``hf-beam`` (set equality; near-ties may flip). One vLLM engine
serves every vLLM run (built once, after the transformers runs). Prints a table and ends with one JSON line; the
ratios are tokens/s against ``hf-beam`` and ``vllm-native-beam`` measured in the same run.

    VLLM_CPU_KVCACHE_SPACE=2 VLLM_CPU_OMP_THREADS_BIND=0-1 \\
        python benchmarks/sampling_throughput.py --batch 8 --beams 3 --max-new-tokens 64
    bash benchmarks/sampling_throughput_gpu.sh      # the GPU run (CUDA vLLM), one command
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

RUNS = ("hf-beam", "vllm-native-beam", "vllm-btp-beam", "vllm-sample-and-rank", "hf-sample-and-rank")
DEFAULT_RUNS = "hf-beam,vllm-native-beam,vllm-btp-beam,vllm-sample-and-rank"


def measure(sampler: Any, problems: list, params: Any) -> tuple[dict[str, Any], list]:
    """Warm up (one problem, a few tokens, same strategy), then time one call on all problems."""
    from btp_ray.sampling import GenerationParams

    sampler.generate(problems[:1], GenerationParams(**{**params.to_dict(), "max_new_tokens": 4, "stop": ()}))
    started = time.perf_counter()
    results = sampler.generate(problems, params)
    elapsed = time.perf_counter() - started
    tokens = sum(c.num_tokens for candidates in results for c in candidates)
    count = sum(len(candidates) for candidates in results)
    row = {
        "seconds": round(elapsed, 3),
        "generated_tokens": tokens,
        "candidates": count,
        "tokens_per_s": round(tokens / elapsed, 2),
        "candidates_per_s": round(count / elapsed, 3),
    }
    return row, results


def mean_pass_rate(sandbox: Any, problems: list, results: list) -> float:
    """Mean over every candidate of the fraction of its problem's tests it passes."""
    from btp_ray.execution import ExecutionJob

    rates = []
    for problem, candidates in zip(problems, results, strict=True):
        jobs = [ExecutionJob(c.program, problem.tests, test_setup=problem.test_setup) for c in candidates]
        rates.extend(result.pass_rate for result in sandbox.run_many(jobs))
    return round(sum(rates) / len(rates), 4) if rates else 0.0


def same_top_k(reference: list, results: list) -> int:
    """Problems whose candidates are the same token sequences as the reference's (order ignored)."""
    return sum(
        {c.token_ids for c in ours} == {c.token_ids for c in theirs}
        for ours, theirs in zip(results, reference, strict=True)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--dtype", default="float32", help="float32 by default so that HF and vLLM beams compare")
    parser.add_argument("--batch", type=int, default=8, help="problems per generate call")
    parser.add_argument("--beams", type=int, default=3, help="beam width (or samples per problem)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--runs", default=DEFAULT_RUNS, help=f"comma-separated, from {', '.join(RUNS)}")
    parser.add_argument("--temperature", type=float, default=0.8, help="sample-and-rank temperature")
    parser.add_argument("--gpu-memory-utilization", type=float, default=None)
    parser.add_argument("--block-size", type=int, default=None, help="vLLM KV block size (default: btp-ray's)")
    parser.add_argument("--hf-batch-size", type=int, default=8)
    parser.add_argument(
        "--eager",
        action="store_true",
        help="vLLM without compiling its model (enforce_eager): starts faster; the sampler's default compiles",
    )
    parser.add_argument("--no-pass-rate", action="store_true", help="skip running the candidates' tests")
    args = parser.parse_args()
    runs = [r for r in args.runs.split(",") if r]
    unknown = [r for r in runs if r not in RUNS]
    if unknown:
        print(f"--runs: unknown run(s) {', '.join(unknown)}; choose from {', '.join(RUNS)}", file=sys.stderr)
        raise SystemExit(2)
    if args.batch < 1 or args.beams < 1 or args.max_new_tokens < 1:
        print("--batch, --beams and --max-new-tokens must be >= 1", file=sys.stderr)
        raise SystemExit(2)

    from btp_ray.data import load_problems
    from btp_ray.sampling import GenerationParams, SamplerConfig

    base = SamplerConfig(model=args.model, device=args.device, dtype=args.dtype, hf_batch_size=args.hf_batch_size)
    on_cpu = base.resolved_device() == "cpu"
    problems = load_problems("humaneval", limit=args.batch)
    beam = GenerationParams(strategy="beam", num_candidates=args.beams, max_new_tokens=args.max_new_tokens)
    ranked = GenerationParams(
        strategy="sample_and_rank",
        num_candidates=args.beams,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
    )
    sandbox = None
    if not args.no_pass_rate:
        from btp_ray.execution import Sandbox

        sandbox = Sandbox()
    rows: dict[str, dict[str, Any]] = {}
    outputs: dict[str, list] = {}

    def record(name: str, sampler: Any, params: Any, load_s: float) -> None:
        row, results = measure(sampler, problems, params)
        row["load_s"] = round(load_s, 1)
        row["strategy"] = params.strategy.value
        if params.strategy.value == "beam":
            row["beam_search"] = results[0][0].metadata.get("beam_search") if results and results[0] else None
        if sandbox is not None:
            row["mean_pass_rate"] = mean_pass_rate(sandbox, problems, results)
        stats = sampler.usage().get("beam_search_stats")
        if name == "vllm-btp-beam" and stats:
            row["engine"] = stats
        rows[name] = row
        outputs[name] = results
        print(f"{name}: {json.dumps(row)}", flush=True)

    hf_runs = [r for r in runs if r.startswith("hf-")]
    if hf_runs:
        from btp_ray.sampling.hf import HFSampler

        started = time.perf_counter()
        sampler = HFSampler(SamplerConfig(**{**base.to_dict(), "backend": "hf"}))
        load_s = time.perf_counter() - started
        for name in hf_runs:
            record(name, sampler, beam if name == "hf-beam" else ranked, load_s)
        sampler.close()
        del sampler
    vllm_runs = [r for r in runs if r.startswith("vllm-")]
    if vllm_runs:
        from btp_ray.sampling.vllm_sampler import VLLMSampler

        started = time.perf_counter()
        config = SamplerConfig(
            **{
                **base.to_dict(),
                "backend": "vllm",
                "gpu_memory_utilization": args.gpu_memory_utilization or (0.3 if on_cpu else 0.6),
                "enforce_eager": args.eager,
                "max_model_len": 2048,
                "block_size": args.block_size,
            }
        )
        sampler = VLLMSampler(config)
        load_s = time.perf_counter() - started
        for name in vllm_runs:
            if name.endswith("-beam"):
                sampler.beam_search_impl = "native" if name == "vllm-native-beam" else "btp"
                record(name, sampler, beam, load_s)
            else:
                record(name, sampler, ranked, load_s)
        sampler.close()
        del sampler
    if sandbox is not None:
        sandbox.close()

    if "hf-beam" in outputs:
        for name in ("vllm-native-beam", "vllm-btp-beam"):
            if name in outputs:
                rows[name]["same_top_k_as_hf"] = same_top_k(outputs["hf-beam"], outputs[name])

    header = f"{'run':22} {'load s':>7} {'gen s':>8} {'tokens':>7} {'tok/s':>8} {'cands':>6} {'cand/s':>7} {'pass':>6}"
    print(header)
    for name, row in rows.items():
        print(
            f"{name:22} {row['load_s']:7.1f} {row['seconds']:8.2f} {row['generated_tokens']:7d} "
            f"{row['tokens_per_s']:8.2f} {row['candidates']:6d} {row['candidates_per_s']:7.3f} "
            f"{row.get('mean_pass_rate', float('nan')):6.3f}"
        )

    def ratio(numerator: str, denominator: str) -> float | None:
        if numerator in rows and denominator in rows and rows[denominator]["tokens_per_s"] > 0:
            return round(rows[numerator]["tokens_per_s"] / rows[denominator]["tokens_per_s"], 2)
        return None

    ratios = {
        "btp_beam_over_hf_beam": ratio("vllm-btp-beam", "hf-beam"),
        "btp_beam_over_vllm_native_beam": ratio("vllm-btp-beam", "vllm-native-beam"),
        "vllm_native_beam_over_hf_beam": ratio("vllm-native-beam", "hf-beam"),
        "sample_and_rank_over_hf_beam": ratio("vllm-sample-and-rank", "hf-beam"),
        "sample_and_rank_over_btp_beam": ratio("vllm-sample-and-rank", "vllm-btp-beam"),
    }
    for name, value in ratios.items():
        if value is not None:
            print(f"{name}: {value}x")
    print("target: btp_beam_over_hf_beam >= 3 and btp_beam_over_vllm_native_beam >= 3")
    summary = {
        "benchmark": "sampling_throughput",
        "model": args.model,
        "device": base.resolved_device(),
        "dtype": args.dtype,
        "batch": args.batch,
        "beams": args.beams,
        "max_new_tokens": args.max_new_tokens,
        "cpu_threads_bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND"),
        "vllm_compiled": not args.eager,
        "vllm_engine_in_process": os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0",
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "results": rows,
        "ratios": ratios,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
