"""Effects on held-out problems with honest uncertainty: per-arm greedy pass@1 and mean pass rate with paired-bootstrap
confidence intervals over the evaluation problems, and each arm's paired difference against the baseline (no
fine-tuning) and against uniform replay. "Paired" means every bootstrap resample draws the same problems for both
arms, so problem difficulty cancels out of the differences.

Used by ``benchmarks/btp_effect.py``; the sensitivity arm (trained on the evaluation problems' own references) is
kept apart, a check that the measurement can see an effect, never a result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

SENSITIVITY = "sensitivity"
BASELINE = "baseline"
UNIFORM = "uniform"
METRICS = {"pass_at_1": "solved", "mean_pass_rate": "pass_rate"}


def bootstrap_indices(n: int, n_boot: int, seed: int) -> Any:
    """``n_boot`` resamples (with replacement) of ``n`` problem indices, shared by every arm."""
    import numpy as np

    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def interval(values: Sequence[float], indices: Any, level: float = 0.95) -> dict[str, float]:
    """Mean of ``values`` and its percentile bootstrap CI over ``indices``; ``p_le_0`` is the share of resampled
    means at or below zero (for a difference: how often the bootstrap sees no gain)."""
    import numpy as np

    data = np.asarray(values, dtype=float)
    means = data[indices].mean(axis=1)
    tail = (1.0 - level) / 2.0
    return {
        "mean": float(data.mean()),
        "low": float(np.quantile(means, tail)),
        "high": float(np.quantile(means, 1.0 - tail)),
        "p_le_0": float((means <= 0).mean()),
    }


def paired_effects(arms: Mapping[str, Mapping[str, Any]], *, n_boot: int = 10000, seed: int = 0) -> dict[str, Any]:
    """For each arm (``arms[name]["eval"]`` holds per-problem ``solved`` and ``pass_rate`` lists in one problem
    order): the metrics with CIs, and the paired differences against the baseline and against uniform."""
    sizes = {len(a["eval"]["solved"]) for a in arms.values()}
    if len(sizes) != 1:
        raise ValueError(f"arms were evaluated on different problem counts: {sorted(sizes)}")
    indices = bootstrap_indices(sizes.pop(), n_boot, seed)
    out: dict[str, Any] = {}
    for name, arm in arms.items():
        entry: dict[str, Any] = {"sensitivity_check": name == SENSITIVITY}
        for metric, key in METRICS.items():
            entry[metric] = interval(arm["eval"][key], indices)
        for label, reference in (("vs_baseline", BASELINE), ("vs_uniform", UNIFORM)):
            if name == reference or reference not in arms:
                continue
            entry[label] = {
                metric: interval(
                    [float(a) - float(b) for a, b in zip(arm["eval"][key], arms[reference]["eval"][key], strict=True)],
                    indices,
                )
                for metric, key in METRICS.items()
            }
        out[name] = entry
    return out


def _fmt(ci: Mapping[str, float]) -> str:
    return f"{ci['mean']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]"


def _diff(ci: Mapping[str, float] | None) -> str:
    if ci is None:
        return "—"
    return f"{ci['mean']:+.3f} [{ci['low']:+.3f}, {ci['high']:+.3f}]"


def effect_table(effects: Mapping[str, Any], n_problems: int) -> str:
    """A markdown table: one row per arm, the sensitivity check last and marked."""
    lines = [
        f"| arm | greedy pass@1 (95% CI), n={n_problems} | mean pass rate (95% CI) | Δ pass@1 vs baseline | "
        "Δ pass rate vs baseline | Δ pass@1 vs uniform |",
        "|---|---|---|---|---|---|",
    ]
    ordered = sorted(effects.items(), key=lambda item: item[0] == SENSITIVITY)
    for name, e in ordered:
        label = f"{name} (check, not a result)" if e["sensitivity_check"] else name
        base = e.get("vs_baseline") or {}
        uniform = e.get("vs_uniform") or {}
        lines.append(
            f"| {label} | {_fmt(e['pass_at_1'])} | {_fmt(e['mean_pass_rate'])} | {_diff(base.get('pass_at_1'))} | "
            f"{_diff(base.get('mean_pass_rate'))} | {_diff(uniform.get('pass_at_1'))} |"
        )
    return "\n".join(lines)


def plot_effects(effects: Mapping[str, Any], path: Path, *, title: str) -> Path:
    """Bars with 95% CIs for both metrics, the sensitivity check hatched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(effects, key=lambda n: n == SENSITIVITY)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric, label in zip(axes, METRICS, ("greedy pass@1", "mean pass rate"), strict=True):
        means = [effects[n][metric]["mean"] for n in names]
        errors = [
            [m - effects[n][metric]["low"] for n, m in zip(names, means, strict=True)],
            [effects[n][metric]["high"] - m for n, m in zip(names, means, strict=True)],
        ]
        bars = ax.bar(range(len(names)), means, yerr=errors, capsize=4, color="#4c72b0")
        for bar, name in zip(bars, names, strict=True):
            if name == SENSITIVITY:
                bar.set_hatch("//")
                bar.set_color("#bbbbbb")
        ax.set_xticks(range(len(names)), names, rotation=25, ha="right")
        ax.set_ylabel(f"{label} (95% bootstrap CI)")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
