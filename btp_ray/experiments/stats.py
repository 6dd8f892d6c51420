"""Statistics for results over seeds: the mean with a two-sided Student-t confidence interval."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class MeanCI:
    """The mean of ``n`` values and its confidence interval ``[low, high]`` at ``level``.

    With one value the interval is undefined: ``half_width``, ``low`` and ``high`` are None.
    """

    mean: float
    half_width: float | None
    low: float | None
    high: float | None
    n: int
    level: float
    std: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mean_ci(values: Sequence[float], level: float = 0.95) -> MeanCI:
    """Mean ± t_{(1+level)/2, n−1} · s/√n, with s the sample standard deviation (ddof = 1)."""
    from scipy.stats import t as student_t

    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    data = [float(v) for v in values]
    if not data:
        raise ValueError("mean_ci needs at least one value")
    if any(not math.isfinite(v) for v in data):
        raise ValueError(f"mean_ci needs finite values, got {data}")
    n = len(data)
    mean = math.fsum(data) / n
    if n == 1:
        return MeanCI(mean=mean, half_width=None, low=None, high=None, n=1, level=level, std=None)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in data) / (n - 1))
    half = float(student_t.ppf((1.0 + level) / 2.0, n - 1)) * std / math.sqrt(n)
    return MeanCI(mean=mean, half_width=half, low=mean - half, high=mean + half, n=n, level=level, std=std)
