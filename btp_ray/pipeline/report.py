"""``report.md`` of a BTP run: every number in it comes from ``btp_results.json`` (nothing is computed only here);
and the table and number formats every report uses (the suite's too)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from btp_ray.experiment_config import ExperimentConfig
from btp_ray.io import atomic_write_text
from btp_ray.pipeline.run_dir import REPORT, RunDirectory


def number(value: Any) -> str:
    """How a value appears in every report: 3 decimals, or 3 significant digits for small non-zero floats."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        if value != 0.0 and abs(value) < 0.01:
            return f"{value:.3g}"
        return f"{value:.3f}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table of ``rows`` (cells written by :func:`number`, pipes escaped)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(number(v).replace("|", "\\|") for v in row) + " |" for row in rows]
    return "\n".join(lines)


def render_report(config: ExperimentConfig, results: dict[str, Any]) -> str:
    iterations = results["iterations"]
    parts = [
        f"# BTP run: {results['experiment']}",
        "",
        f"- mode: `{results['mode']}`; dataset: `{results['dataset']}`",
        f"- source model: `{results['source_model']}`; target model: `{results['target_model']}`",
        f"- problems: {len(results['train_problems'])} for BTP sampling, {len(results['eval_problems'])} held out "
        "for evaluation (disjoint unless eval_on_train)",
        f"- beam width k = {config.generation.num_candidates}; replay `{config.replay.strategy.value}`, "
        f"β = {config.replay.beta}, α = {config.replay.alpha}; fine-tuning batch = {config.batch_size}",
        "",
        "## Evaluation (held-out problems)",
        "",
        "A problem is solved only when the greedy candidate passes every test; pass@k uses the unbiased estimator.",
        "",
    ]
    eval_rows = []
    for record in iterations:
        ev = record.get("eval")
        if not ev:
            continue
        pass_k = ev.get("pass_at_k", {})
        eval_rows.append(
            [
                record["iteration"],
                ev["num_problems"],
                ev["greedy_pass_at_1"],
                pass_k.get("pass@5"),
                pass_k.get("pass@10"),
                ev["mean_pass_rate"],
                ev["solved"],
                ev["exact_match"],
                ev.get("rsr"),
            ]
        )
    if eval_rows:
        parts.append(
            table(
                [
                    "iteration",
                    "problems",
                    "greedy pass@1",
                    "pass@5",
                    "pass@10",
                    "mean pass rate",
                    "solved",
                    "exact match",
                    "RSR vs iter 0 (%)",
                ],
                eval_rows,
            )
        )
    else:
        parts.append("No held-out evaluation in this run.")
    parts += ["", "## BTP sampling and replay", ""]
    sample_rows = []
    for record in iterations:
        sample = record.get("sample")
        if not sample:
            continue
        p2v = sample.get("p2value", {})
        timings = sample.get("timings") or {}
        sample_rows.append(
            [
                record["iteration"],
                sample["candidates"],
                sample["mean_pass_rate"],
                sample["solved_candidates"],
                sample["problems_with_a_full_pass"],
                p2v.get("mean"),
                record.get("buffer", {}).get("size"),
                timings.get("overlap_ratio"),
            ]
        )
    parts.append(
        table(
            [
                "iteration",
                "candidates",
                "mean pass rate",
                "fully passing",
                "problems with a full pass",
                "P2Value mean",
                "buffer size",
                "overlap ratio",
            ],
            sample_rows,
        )
        if sample_rows
        else "No BTP sampling in this run."
    )
    train_rows = [
        [
            r["iteration"],
            r["train"]["adapter"],
            r["train"]["examples"],
            r["train"]["distinct_examples"],
            r["train"]["passing_examples"],
            r["train"]["metrics"].get("first_loss"),
            r["train"]["metrics"].get("final_loss"),
            r["train"]["tokens_per_second"],
            r["train"]["overhead_s"],
        ]
        for r in iterations
        if r.get("train")
    ]
    parts += ["", "## Fine-tuning", ""]
    parts.append(
        table(
            [
                "iteration",
                "adapter",
                "examples",
                "distinct",
                "fully passing",
                "first loss",
                "final loss",
                "tokens/s",
                "fixed overhead (s)",
            ],
            train_rows,
        )
        if train_rows
        else "No fine-tuning in this run (mode without a target, or n_iterations = 0)."
    )
    cost = results["cost"]
    parts += ["", "## Cost", ""]
    parts.append(table(["phase", "seconds"], sorted(cost["phase_seconds"].items())))
    parts += ["", f"Every candidate, with its tests, possibility and P2Value: `{results['candidates_file']}`.", ""]
    return "\n".join(parts)


def write_report(run: RunDirectory, config: ExperimentConfig, results: dict[str, Any]) -> None:
    atomic_write_text(run.path / REPORT, render_report(config, results))
