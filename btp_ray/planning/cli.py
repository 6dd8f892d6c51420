"""``btp plan``: the placement planner's command line and its printed plan (a table per node and the ``--set``
overrides of a run that uses it). A plan that cannot fit exits 2 with one line saying why."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from btp_ray.planning.memory import GB
from btp_ray.planning.planner import Placement, Plan, PlanRefused, PlanRequest, plan
from btp_ray.planning.shapes import UnknownShapeError

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="btp plan",
        description="Where samplers (vLLM engines), learner ranks and sandboxes go, and the memory each GPU needs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--target", required=True, help="model fine-tuned (alias, hub id known offline, local folder)")
    parser.add_argument("--source", help="model that samples (default: the target)")
    parser.add_argument("--nodes", type=int, required=True, help="GPU nodes")
    parser.add_argument("--gpus-per-node", type=int, required=True, help="GPUs on each node")
    parser.add_argument("--gpu-memory-gb", type=float, default=80.0, help="memory of one GPU")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="share of a GPU a plan may use")
    parser.add_argument("--beam-width", type=int, default=8, help="beams (candidates) per problem")
    parser.add_argument("--seq-len", type=int, default=2048, help="prompt + program tokens per sequence")
    parser.add_argument("--problems-per-engine", type=int, default=8, help="problems an engine decodes at once")
    lora = parser.add_mutually_exclusive_group()
    lora.add_argument("--lora", dest="lora", action="store_true", default=True, help="LoRA fine-tuning")
    lora.add_argument("--full", dest="lora", action="store_false", help="full fine-tuning (every weight trains)")
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--zero-stage", type=int, choices=(2, 3), default=None, help="default: the cheapest that fits")
    parser.add_argument("--micro-batch", type=int, default=1, help="learner sequences per rank per step")
    parser.add_argument(
        "--no-checkpointing",
        dest="checkpointing",
        action="store_false",
        help="keep all activations (default: activation checkpointing on)",
    )
    parser.add_argument("--tensor-parallel-size", type=int, default=None, help="GPUs per engine (default: smallest)")
    parser.add_argument("--num-engines", type=int, default=None, help="engines (default: as many as fit)")
    parser.add_argument("--learner-gpus", type=int, default=None, help="learner ranks (default: fewest that fit)")
    parser.add_argument(
        "--placement",
        choices=[p.value for p in Placement],
        default="auto",
        help="split: engines and learner on distinct GPUs; colocate: sharing every GPU",
    )
    parser.add_argument("--sandbox-nodes", type=int, default=0, help="CPU nodes offering the `sandbox` resource")
    parser.add_argument("--sandbox-cpus-per-node", type=int, default=32)
    parser.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    return parser


def render(result: Plan) -> str:
    """The plan as text: the setting, each role's memory, a line per GPU, sandboxes and the run's overrides."""
    req, engine, learner = result.request, result.engine, result.learner
    lines = [
        f"target {req.target} ({result.target.total_params() / 1e9:.2f} B params), source {req.source} "
        f"({result.source.total_params() / 1e9:.2f} B); {req.nodes} node(s) x {req.gpus_per_node} GPU(s) x "
        f"{req.gpu_memory_gb:g} GB, {req.gpu_memory_utilization * req.gpu_memory_gb:.1f} GB usable per GPU; "
        f"placement {result.placement.value}",
        f"samplers: {result.num_engines} vLLM engine(s) x tensor parallel {engine.tensor_parallel_size} "
        f"(one STRICT_PACK placement group per engine) on nodes {list(result.engine_nodes)}; per GPU "
        f"{engine.weights_per_gpu / GB:.1f} GB weights + {engine.kv_cache_per_gpu / GB:.1f} GB KV cache "
        f"({req.beam_width} beams x {req.problems_per_engine} problems x {req.seq_len} tokens) + "
        f"{engine.overhead_per_gpu / GB:.1f} GB runtime = {engine.per_gpu / GB:.1f} GB",
        f"learner: {learner.num_gpus} rank(s), {f'LoRA r{req.lora_rank}' if req.lora else 'full fine-tune'}, "
        f"DeepSpeed ZeRO-{learner.zero_stage}, on nodes {sorted(set(result.learner_nodes))}; per GPU "
        f"{learner.model_states / GB:.1f} GB model states + {learner.activations / GB:.1f} GB activations "
        f"(micro-batch {req.micro_batch} x {req.seq_len}, checkpointing {'on' if req.checkpointing else 'off'}) + "
        f"{learner.overhead / GB:.1f} GB runtime = {learner.per_gpu / GB:.1f} GB",
    ]
    for slot in result.slots:
        lines.append(f"  node {slot.node} GPU {slot.gpu}: {', '.join(slot.roles):<40} {slot.bytes_needed / GB:6.1f} GB")
    if req.sandbox_nodes:
        lines.append(
            f"sandboxes: {req.sandbox_nodes} CPU node(s) x {req.sandbox_cpus_per_node} `sandbox` units = "
            f"{req.sandbox_nodes * req.sandbox_cpus_per_node} executors (resources.executor_resource=sandbox)"
        )
    else:
        lines.append("sandboxes: on the GPU nodes' spare CPUs (no sandbox nodes; add some with --sandbox-nodes)")
    lines.extend(f"note: {note}" for note in result.notes)
    overrides = " ".join(f"--set {k}={json.dumps(v)}" for k, v in result.config_overrides().items() if v is not None)
    lines.append(f"run with: {overrides}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        request = PlanRequest(
            target=args.target,
            source=args.source or args.target,
            nodes=args.nodes,
            gpus_per_node=args.gpus_per_node,
            gpu_memory_gb=args.gpu_memory_gb,
            gpu_memory_utilization=args.gpu_memory_utilization,
            beam_width=args.beam_width,
            seq_len=args.seq_len,
            problems_per_engine=args.problems_per_engine,
            lora=args.lora,
            lora_rank=args.lora_rank,
            zero_stage=args.zero_stage,
            micro_batch=args.micro_batch,
            checkpointing=args.checkpointing,
            tensor_parallel_size=args.tensor_parallel_size,
            num_engines=args.num_engines,
            learner_gpus=args.learner_gpus,
            placement=args.placement,
            sandbox_nodes=args.sandbox_nodes,
            sandbox_cpus_per_node=args.sandbox_cpus_per_node,
        )
        result = plan(request)
    except (PlanRefused, UnknownShapeError, ValueError) as exc:
        print(f"btp plan: refused: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(result.to_dict()) if args.json else render(result))
    return 0
