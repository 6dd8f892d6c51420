"""Learner throughput: tokens/s and fixed overhead (call → first optimizer step) of LoRA fine-tuning in one plain
process, and in a Ray Train ``TorchTrainer`` with DDP and with DeepSpeed ZeRO-2, all measured in this process.
Ratios are against the DDP run. Prints a table, then one JSON line.

    python benchmarks/training_throughput.py                       # tiny random Llama, 2 CPU workers
    python benchmarks/training_throughput.py --model smollm2-135m  # the embedded SmolLM2-135M
    python benchmarks/training_throughput.py --model random-1b --gpu --workers 1 --strategies deepspeed

``random-1b`` is a random-weight 1B-class Llama (16 layers, hidden 2048, 32 heads, 8 KV heads); ``peak_mb`` is
peak GPU memory allocated on a GPU, peak RSS of rank 0 on a CPU. ``tokens_per_s`` counts every step;
``steady_tokens_per_s`` leaves out the first ``--warmup-steps``, which on a GPU dominate a short run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from btp_ray.training import Learner, TrainingConfig, TrainingExample, TrainResult, train_with_ray
from btp_ray.training.tiny_model import make_tiny_llama


def synthetic_examples(count: int, lines: int) -> list[TrainingExample]:
    """Programs of ``lines`` lines each, distinct per example, behind a short instruction."""
    examples = []
    for i in range(count):
        body = "\n".join(f"    total += {i} * {j} - x" for j in range(lines))
        program = f"def f{i}(x):\n    total = 0\n{body}\n    return total\n"
        examples.append(TrainingExample(prompt=f"Write f{i}(x), a sum of {lines} terms.", program=program))
    return examples


def resolve_model(name: str, workdir: Path, tokenizer_dir: str | None = None) -> str:
    if name == "tiny":
        return str(make_tiny_llama(workdir / "tiny", num_layers=2, hidden_size=64, tokenizer_from=tokenizer_dir))
    if name == "random-1b":
        return str(
            make_tiny_llama(
                workdir / "random-1b",
                num_layers=16,
                hidden_size=2048,
                num_heads=32,
                num_kv_heads=8,
                tokenizer_from=tokenizer_dir,
            )
        )
    return name


def steady_tokens_per_second(result: TrainResult, warmup_steps: int) -> float | None:
    """Tokens/s over the steps after the first ``warmup_steps`` (CUDA and allocator warm-up take the first one or
    two steps: 2.3 s and 1.2 s against 0.13 s later for the 1B model on an H200); None when no step is left."""
    steady = result.step_metrics[warmup_steps:]
    seconds = sum(m.step_seconds for m in steady)
    return sum(m.tokens for m in steady) / seconds if steady and seconds > 0 else None


def row(label: str, result: TrainResult, warmup_steps: int) -> dict[str, object]:
    steady = steady_tokens_per_second(result, warmup_steps)
    return {
        "run": label,
        "workers": result.manifest.world_size,
        "steps": len(result.step_metrics),
        "overhead_s": round(result.overhead_seconds, 2),
        "train_s": round(result.train_seconds, 2),
        "total_s": round(result.total_seconds, 2),
        "tokens_per_s": round(result.tokens_per_second, 1),
        "steady_tokens_per_s": round(steady, 1) if steady is not None else None,
        "first_loss": round(result.first_loss, 4),
        "final_loss": round(result.final_loss, 4),
        "peak_mb": round(result.manifest.metrics["peak_memory_mb"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="tiny | random-1b | any model alias, path or cached hub id")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--strategies", default="ddp,deepspeed", help="comma-separated: ddp, deepspeed")
    parser.add_argument("--warmup-steps", type=int, default=2, help="steps left out of steady_tokens_per_s")
    parser.add_argument("--zero-stage", type=int, default=2, choices=(2, 3), help="DeepSpeed ZeRO stage")
    parser.add_argument("--skip-single", action="store_true", help="skip the one-process Learner baseline")
    parser.add_argument("--gpu", action="store_true", help="train on GPUs (bf16), one per worker")
    parser.add_argument(
        "--tokenizer-dir", default=None, help="tokenizer of the random models (default: the embedded model's)"
    )
    args = parser.parse_args()

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="btp-train-bench-") as tmp:
        workdir = Path(tmp)
        model = resolve_model(args.model, workdir, args.tokenizer_dir)
        examples = synthetic_examples(args.examples, lines=max(4, args.seq_len // 20))

        def config(**overrides: object) -> TrainingConfig:
            settings: dict[str, object] = {
                "base_model": model,
                "max_steps": args.steps,
                "per_device_batch_size": args.batch_size,
                "max_seq_len": args.seq_len,
                "learning_rate": 1e-3,
                "use_gpu": args.gpu,
                "bf16": args.gpu,
                "storage_path": str(workdir / "ray"),
                "zero_stage": args.zero_stage,
            }
            settings.update(overrides)
            return TrainingConfig(**settings)  # type: ignore[arg-type]

        if not args.skip_single:
            device = "cuda" if args.gpu else "cpu"
            result = Learner(config(num_workers=1), device=device).train(examples, output_dir=workdir / "single")
            rows.append(row("in-process", result, args.warmup_steps))
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        try:
            for strategy in strategies:
                result = train_with_ray(config(num_workers=args.workers, strategy=strategy), examples)
                rows.append(row(f"ray-{result.manifest.strategy}", result, args.warmup_steps))
        finally:
            ray.shutdown()

    baseline = next((r for r in rows if r["run"] == "ray-ddp"), rows[0])
    for entry in rows:
        entry["tokens_per_s_vs_baseline"] = round(float(entry["tokens_per_s"]) / float(baseline["tokens_per_s"]), 3)
        entry["overhead_vs_baseline"] = (
            round(float(entry["overhead_s"]) / float(baseline["overhead_s"]), 3) if baseline["overhead_s"] else None
        )
    columns = [
        "run",
        "workers",
        "steps",
        "overhead_s",
        "train_s",
        "tokens_per_s",
        "tokens_per_s_vs_baseline",
        "steady_tokens_per_s",
        "peak_mb",
    ]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    settings = f"model={args.model} seq_len={args.seq_len} batch={args.batch_size} steps={args.steps}"
    print(f"{settings} baseline={baseline['run']}")
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for entry in rows:
        print("  ".join(str(entry[c]).ljust(widths[c]) for c in columns))
    summary = {
        "benchmark": "training_throughput",
        "model": args.model,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "gpu": args.gpu,
        "baseline": baseline["run"],
        "runs": rows,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
