"""The report's figures (matplotlib, Agg backend, PNG), drawn only from the suite's results JSON. Each function
returns the file it wrote, or None when the results hold nothing to draw."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def pass_at_k_curves(steps: Mapping[str, Any], path: Path) -> Path | None:
    baseline = steps.get("baseline", {}).get("results")
    btp = steps.get("btp", {}).get("results")
    if not baseline and not (btp and btp.get("final")):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    if baseline:
        curve = baseline["pass_at_k_curve"]
        ax.plot([int(k) for k in curve], list(curve.values()), marker="o", label="sample-and-filter baseline")
    for label, ev in (("BTP before", (btp or {}).get("baseline")), ("BTP after", (btp or {}).get("final"))):
        if ev:
            points = {int(k.split("@")[1]): v for k, v in ev["pass_at_k"].items()}
            ax.plot(list(points), list(points.values()), marker="s", linestyle="--", label=label)
    ax.set(xlabel="k", ylabel="pass@k (unbiased)", title="pass@k", ylim=(-0.02, 1.02))
    ax.legend()
    return _save(fig, path)


def p2value_distributions(
    sources: Mapping[str, tuple[Mapping[str, Any], Mapping[str, Any]]], path: Path
) -> Path | None:
    """``sources``: label → (stats of passing candidates, stats of failing ones), as ``p2value_stats`` writes them."""
    usable = {k: v for k, v in sources.items() if any(s.get("count") for s in v)}
    if not usable:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(usable), figsize=(5 * len(usable), 3.6), squeeze=False)
    for ax, (label, (passing, failing)) in zip(axes[0], usable.items(), strict=True):
        for name, stats, color in (("passing", passing, "tab:green"), ("failing", failing, "tab:red")):
            if stats.get("count"):
                hist = stats["histogram"]
                edges = hist["edges"]
                widths = [b - a for a, b in itertools.pairwise(edges)]
                ax.bar(edges[:-1], hist["counts"], width=widths, align="edge", alpha=0.55, color=color,
                       label=f"{name} (n={stats['count']})")  # fmt: skip
        ax.set(xlabel="P2Value", ylabel="candidates", title=label, xlim=(0, 1))
        ax.legend()
    return _save(fig, path)


def ablation_bars(ablation: Mapping[str, Any] | None, metrics: tuple[str, ...], path: Path) -> Path | None:
    if not ablation:
        return None
    aggregate = ablation["aggregate"]
    arms = list(aggregate)
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        means, errors, labels = [], [], []
        for arm in arms:
            stat = aggregate[arm]["metrics"].get(metric)
            labels.append(arm)
            means.append(stat["mean"] if stat else 0.0)
            errors.append(stat["half_width"] or 0.0 if stat else 0.0)
        ax.bar(range(len(arms)), means, yerr=errors, capsize=4, color="tab:blue", alpha=0.8)
        ax.set_xticks(range(len(arms)), labels, rotation=35, ha="right", fontsize=8)
        ax.set_title(f"{metric} (mean ± 95% CI)", fontsize=9)
    return _save(fig, path)


def hyperparam_sensitivity(study: Mapping[str, Any] | None, path: Path) -> Path | None:
    if not study or not study.get("sensitivity"):
        return None
    knobs = list(study["sensitivity"])
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(knobs), figsize=(4 * len(knobs), 3.6), squeeze=False)
    for ax, knob in zip(axes[0], knobs, strict=True):
        points = study["sensitivity"][knob]
        labels = [str(p["value"]) for p in points]
        for metric, marker in (("eval_mean_pass_rate", "o"), ("eval_pass_at_1", "s")):
            ys = [p[metric] if p[metric] is not None else float("nan") for p in points]
            ax.plot(range(len(points)), ys, marker=marker, label=metric)
        ax.set_xticks(range(len(points)), labels, rotation=30, fontsize=8)
        ax.set(title=knob, ylim=(-0.02, 1.02))
        loss_ax = ax.twinx()
        losses = [p["train_loss"] if p["train_loss"] is not None else float("nan") for p in points]
        loss_ax.plot(range(len(points)), losses, color="tab:gray", linestyle=":", marker="x", label="train_loss")
        loss_ax.set_ylabel("final train loss", fontsize=8)
        ax.legend(fontsize=7, loc="upper left")
    return _save(fig, path)


def loss_curves(curves: Mapping[str, list[float]], path: Path) -> Path | None:
    usable = {k: v for k, v in curves.items() if v}
    if not usable:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, losses in usable.items():
        ax.plot(range(1, len(losses) + 1), losses, marker=".", label=label)
    ax.set(xlabel="optimizer step", ylabel="training loss", title="Fine-tuning loss")
    ax.legend(fontsize=7)
    return _save(fig, path)


def cost_breakdown(costs: Mapping[str, Mapping[str, float]], path: Path) -> Path | None:
    """``costs``: step → phase → seconds."""
    usable = {k: v for k, v in costs.items() if v}
    if not usable:
        return None
    plt = _pyplot()
    phases = sorted({phase for c in usable.values() for phase in c})
    fig, ax = plt.subplots(figsize=(6.5, 4))
    bottoms = [0.0] * len(usable)
    for phase in phases:
        heights = [usable[step].get(phase, 0.0) for step in usable]
        ax.bar(list(usable), heights, bottom=bottoms, label=phase)
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    ax.set(ylabel="seconds", title="Cost by step and phase")
    ax.legend(fontsize=8)
    return _save(fig, path)
