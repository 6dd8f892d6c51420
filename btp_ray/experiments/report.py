"""``experiment_report.md`` and ``.txt`` of a suite run, with its PNG figures. Everything shown is read from the
suite's results (``suite_results.json``); nothing is computed only here, so every number in a table can be traced
to the JSON (numbers are written by :func:`number`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from btp_ray.experiments import plots
from btp_ray.io import atomic_write_text
from btp_ray.pipeline.report import number, table

REPORT_MD = "experiment_report.md"
REPORT_TXT = "experiment_report.txt"
PLOTS_DIR = "plots"
ABLATION_PLOT_METRICS = ("eval_mean_pass_rate", "final_loss", "batch_mean_p2value")


def ci_text(stat: Mapping[str, Any] | None) -> str:
    if not stat:
        return "–"
    if stat.get("half_width") is None:
        return f"{number(stat['mean'])} (n=1)"
    return f"{number(stat['mean'])} ± {number(stat['half_width'])}"


def _figure(title: str, path: Path | None, root: Path) -> list[str]:
    return [f"![{title}]({path.relative_to(root).as_posix()})", ""] if path is not None else []


def render(suite: Mapping[str, Any], root: Path) -> str:
    """The markdown report; figures are written under ``root/plots``."""
    steps = suite["steps"]
    figures = root / PLOTS_DIR
    env = suite["run"]["environment"]
    parts = [
        f"# BTP experiment report: {suite['name']}",
        "",
        f"- preset: `{suite['preset']}`; dataset: `{suite['dataset']}`; model: `{suite['model']}`",
        f"- git commit: `{env.get('git_commit')}`; python {env.get('python')} on `{env.get('platform')}`",
        f"- seeds: `{suite['run']['seeds']}`; exact config in `suite_results.json` and each step's `run_info.json`",
        "",
        "## Steps",
        "",
        table(
            ["step", "status", "wall (s)", "directory"],
            [[name, s["status"], s.get("wall_s"), s["dir"]] for name, s in steps.items()],
        ),
        "",
    ]
    for name, step in steps.items():
        if step["status"] != "ok":
            parts += [f"Step `{name}` failed: `{step.get('error')}`", ""]
    parts += _baseline_section(steps.get("baseline"))
    parts += _btp_section(steps.get("btp"))
    parts += _figure("pass@k curves", plots.pass_at_k_curves(_ok_steps(steps), figures / "pass_at_k.png"), root)
    parts += _figure(
        "P2Value of passing vs failing candidates",
        plots.p2value_distributions(_p2value_sources(steps), figures / "p2value_distribution.png"),
        root,
    )
    parts += _ablation_section(steps.get("ablation"), figures, root)
    parts += _hyperparam_section(steps.get("hyperparam"), figures, root)
    parts += _big_to_small_section(steps.get("big_to_small"))
    parts += ["## Fine-tuning loss", ""]
    parts += _figure("loss curves", plots.loss_curves(_loss_curves(steps), figures / "loss_curves.png"), root)
    parts += ["## Cost", ""]
    costs = {name: s["results"]["cost"]["phase_seconds"] for name, s in _ok_steps(steps).items()}
    rows = [[name, phase, seconds] for name, phases in costs.items() for phase, seconds in sorted(phases.items())]
    parts += [table(["step", "phase", "seconds"], rows) if rows else "No step finished.", ""]
    parts += _figure("cost breakdown", plots.cost_breakdown(costs, figures / "cost_breakdown.png"), root)
    packages = env.get("packages", {})
    parts += [
        "## Reproducibility",
        "",
        "Package versions: " + ", ".join(f"{k} {v}" for k, v in sorted(packages.items())) + ".",
        f"Hardware: {env.get('cpu_count')} CPUs, GPUs: {env.get('gpus') or 'none'}.",
        "",
    ]
    return "\n".join(parts)


def _ok_steps(steps: Mapping[str, Any]) -> dict[str, Any]:
    return {name: s for name, s in steps.items() if s["status"] == "ok"}


def _results(step: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    return step["results"] if step and step["status"] == "ok" else None


def _baseline_section(step: Mapping[str, Any] | None) -> list[str]:
    results = _results(step)
    if results is None:
        return []
    pass_k = results["pass_at_k"]
    rows = [[k, v] for k, v in pass_k.items()]
    rows += [
        ["mean pass rate", results["mean_pass_rate"]],
        ["sample-filter accuracy", results["filter_accuracy"]],
        ["sample-filter solved", results["filter_solved"]],
        ["problems", results["num_problems"]],
        ["samples per problem", results["samples_per_problem"]],
    ]
    return [
        "## 1. Sample-and-filter baseline",
        "",
        "n samples per problem, each tested in the sandbox; the filter keeps a sample that passes every test when "
        "there is one.",
        "",
        table(["metric", "value"], rows),
        "",
    ]


def _btp_section(step: Mapping[str, Any] | None) -> list[str]:
    results = _results(step)
    if results is None:
        return []
    eval_rows, sample_rows = [], []
    for record in results["iterations"]:
        ev = record.get("eval")
        if ev:
            eval_rows.append(
                [record["iteration"], ev["num_problems"], ev["greedy_pass_at_1"], ev["mean_pass_rate"], ev["solved"],
                 ev.get("rsr")]
            )  # fmt: skip
        sample = record.get("sample")
        if sample:
            sample_rows.append(
                [record["iteration"], sample["candidates"], sample["mean_pass_rate"], sample["solved_candidates"],
                 sample["p2value_passing"].get("mean"), sample["p2value_failing"].get("mean")]
            )  # fmt: skip
    parts = ["## 2. BTP", "", f"Full run report: `{step['dir']}/report.md`.", ""]
    if eval_rows:
        parts += [
            table(["iteration", "problems", "greedy pass@1", "mean pass rate", "solved", "RSR (%)"], eval_rows),
            "",
        ]
    if sample_rows:
        parts += [
            table(
                ["iteration", "candidates", "mean pass rate", "fully passing", "P2Value passing", "P2Value failing"],
                sample_rows,
            ),
            "",
        ]
    return parts


def _ablation_section(step: Mapping[str, Any] | None, figures: Path, root: Path) -> list[str]:
    results = _results(step)
    if results is None:
        return []
    metrics = results["metrics"]
    rows = []
    for arm, agg in results["aggregate"].items():
        rows.append(
            [arm, agg["seeds_ok"], ", ".join(agg["statuses"]), *(ci_text(agg["metrics"].get(m)) for m in metrics)]
        )
    digests = sorted({r["pool_digest"][:12] for r in results["rows"]})
    base = results.get("base_eval")
    parts = [
        "## 3. Ablation of replay strategies",
        "",
        f"One candidate pool for every arm and seed (digest `{', '.join(digests)}`), the same training budget per "
        "fit; mean ± 95% CI (Student t) over seeds.",
        "",
        table(["arm", "seeds ok", "status", *metrics], rows),
        "",
    ]
    if base:
        parts += [table(["base model", "greedy pass@1", "mean pass rate"], [["before fine-tuning",
                  base["greedy_pass_at_1"], base["greedy_mean_pass_rate"]]]), ""]  # fmt: skip
    notes = sorted({f"{r['arm']}: {r['note']}" for r in results["rows"] if r.get("note")})
    notes += sorted({f"{r['arm']} (seed {r['seed']}): {r['error']}" for r in results["rows"] if r.get("error")})
    parts += [f"- {note}" for note in notes] + ([""] if notes else [])
    parts += _figure(
        "ablation", plots.ablation_bars(results, ABLATION_PLOT_METRICS, figures / "ablation_bars.png"), root
    )
    return parts


def _hyperparam_section(step: Mapping[str, Any] | None, figures: Path, root: Path) -> list[str]:
    results = _results(step)
    if results is None:
        return []
    knobs = list(results["defaults"])
    rows = [
        [t["index"], *(t["knobs"][k] for k in knobs), t["status"], t["metrics"].get("eval_pass_at_1"),
         t["metrics"].get("eval_mean_pass_rate"), t["metrics"].get("train_loss")]
        for t in results["trials"]
    ]  # fmt: skip
    best = results.get("best")
    parts = [
        "## 4. Hyperparameter study (Ray Tune)",
        "",
        f"Search `{results['settings']['search_type']}`, {results['num_trials']} trials "
        f"({results['num_errors']} failed, {results['num_stopped_early']} stopped early by ASHA); Tune results in "
        f"`{results['tune_path']}`.",
        "",
        table(["trial", *knobs, "status", "eval pass@1", "eval mean pass rate", "final loss"], rows),
        "",
    ]
    if best:
        parts += ["Best configuration (held-out pass@1, then mean pass rate, then loss):", ""]
        parts += [table(["knob", "value"], [[k, best["knobs"][k]] for k in knobs]), ""]
    errors = [f"- trial {t['index']}: {t['error']}" for t in results["trials"] if t.get("error")]
    parts += errors + ([""] if errors else [])
    parts += _figure(
        "hyperparameter sensitivity",
        plots.hyperparam_sensitivity(results, figures / "hyperparam_sensitivity.png"),
        root,
    )
    return parts


def _big_to_small_section(step: Mapping[str, Any] | None) -> list[str]:
    results = _results(step)
    if results is None:
        return []
    rows = []
    for label in ("before", "after"):
        ev = results.get(label)
        if ev:
            rows.append([label, ev["greedy_pass_at_1"], ev["mean_pass_rate"], ev["solved"]])
    parts = [
        "## 5. Big-to-small",
        "",
        f"Source `{results['source_model']}` samples; target `{results['target_model']}` is fine-tuned"
        + (" (source = target: self-improvement)." if results["self_improvement"] else "."),
        "",
    ]
    if rows:
        parts += [table(["target", "greedy pass@1", "mean pass rate", "solved"], rows), ""]
    parts += [table(["RSR (%)"], [[results.get("rsr")]]), ""]
    return parts


def _p2value_sources(steps: Mapping[str, Any]) -> dict[str, tuple[Mapping[str, Any], Mapping[str, Any]]]:
    sources = {}
    btp = _results(steps.get("btp"))
    if btp:
        for record in btp["iterations"]:
            sample = record.get("sample")
            if sample:
                sources[f"BTP beams, iteration {record['iteration']}"] = (
                    sample["p2value_passing"],
                    sample["p2value_failing"],
                )
    baseline = _results(steps.get("baseline"))
    if baseline:
        sources["baseline samples"] = (baseline["p2value_passing"], baseline["p2value_failing"])
    return sources


def _loss_curves(steps: Mapping[str, Any]) -> dict[str, list[float]]:
    curves: dict[str, list[float]] = {}
    for name in ("btp", "big_to_small"):
        results = _results(steps.get(name))
        for record in (results or {}).get("iterations", []):
            train = record.get("train")
            if train:
                curves[f"{name} iteration {record['iteration']}"] = [s["loss"] for s in train["steps"]]
    ablation = _results(steps.get("ablation"))
    first_seed = ablation["settings"]["seeds"][0] if ablation else None
    for row in (ablation or {}).get("rows", []):
        if row.get("train") and row["seed"] == first_seed:
            curves[f"ablation {row['arm']} seed {row['seed']}"] = row["train"]["losses"]
    return curves


def to_text(markdown: str) -> str:
    """The plain-text report: the markdown with figure links spelled out."""
    text = re.sub(r"!\[([^\]]*)\]\(([^)]*)\)", r"[figure: \2 - \1]", markdown)
    return re.sub(r"^#+ (.*)$", lambda m: m.group(1).upper(), text, flags=re.MULTILINE)


def write_report(suite: Mapping[str, Any], root: Path) -> tuple[Path, Path]:
    markdown = render(suite, root)
    atomic_write_text(root / REPORT_MD, markdown)
    atomic_write_text(root / REPORT_TXT, to_text(markdown))
    return root / REPORT_MD, root / REPORT_TXT
