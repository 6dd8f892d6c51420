"""Honest evaluation metrics: unbiased pass@k, greedy pass@1, mean pass rate, accuracy, exact match, RSR, P2Value
summaries and cost records.

A problem counts as solved only when a candidate passes *every* test; "some beam passed one test" is never a solve.
"""

from __future__ import annotations

import ast
import io
import math
import tokenize
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimator of pass@k (Chen et al. 2021): 1 − C(n−c, k) / C(n, k), computed stably.

    ``n`` samples of which ``c`` are correct. Requires 0 ≤ c ≤ n and 1 ≤ k ≤ n.
    """
    if n < 1 or k < 1 or k > n or not 0 <= c <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i): a product of numbers in (0, 1], no overflow.
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_pass_at_k(counts: Iterable[tuple[int, int]], k: int) -> float:
    """pass@k averaged over problems, from ``(n, c)`` per problem. Problems with ``n < k`` are an error: pass@k is
    undefined for them, and silently skipping them would bias the mean."""
    values = [pass_at_k(n, c, k) for n, c in counts]
    if not values:
        raise ValueError("mean_pass_at_k: no problems")
    return float(np.mean(values))


def is_solved(pass_rate: float) -> bool:
    """A candidate solves its problem only if it passes all tests."""
    return pass_rate >= 1.0


def relative_success_rate(a: float, b: float) -> float:
    """RSR = 100·(A − B)/(100 − B) in percent (EG-CFG): the share of the baseline's remaining failures fixed.

    ``a`` and ``b`` are success rates in percent. When the baseline is already 100 % the RSR is undefined: NaN.
    """
    for name, value in (("a", a), ("b", b)):
        if not 0.0 <= value <= 100.0:
            raise ValueError(f"relative_success_rate: {name} must be a percentage in [0, 100], got {value}")
    if b >= 100.0:
        return math.nan
    return 100.0 * (a - b) / (100.0 - b)


def exact_match_form(code: str) -> str:
    """Code with comments, docstrings-as-expressions aside, and formatting normalised, for exact-match comparison.

    Parses and unparses with :mod:`ast` (dropping comments and layout); code that does not parse falls back to
    token-level normalisation with comments and blank lines removed.
    """
    try:
        return ast.unparse(ast.parse(code)).strip()
    except SyntaxError:
        pass
    try:
        tokens = [
            tok.string
            for tok in tokenize.generate_tokens(io.StringIO(code).readline)
            if tok.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)
        ]
        return " ".join(t for t in tokens if t)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return " ".join(code.split())


def exact_match(code: str, reference: str) -> bool:
    """Whether two programs are the same after :func:`exact_match_form`."""
    return exact_match_form(code) == exact_match_form(reference)


@dataclass(frozen=True)
class ProblemOutcome:
    """What was observed for one problem: the pass rate of each of its n candidates, and of the greedy/top one."""

    task_id: str
    pass_rates: tuple[float, ...]
    selected_pass_rate: float | None = None  # the greedy / top-ranked candidate
    exact_match: bool | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "pass_rates", tuple(float(r) for r in self.pass_rates))
        bad = [r for r in self.pass_rates if not 0.0 <= r <= 1.0]
        if self.selected_pass_rate is not None and not 0.0 <= self.selected_pass_rate <= 1.0:
            bad.append(self.selected_pass_rate)
        if bad:
            raise ValueError(f"{self.task_id}: pass rates must be in [0, 1], got {bad}")

    @property
    def n(self) -> int:
        return len(self.pass_rates)

    @property
    def c(self) -> int:
        return sum(1 for r in self.pass_rates if is_solved(r))


@dataclass(frozen=True)
class EvalSummary:
    """Aggregated metrics over problems, with the counts they come from."""

    num_problems: int
    samples_per_problem: int
    pass_at_k: dict[int, float]
    greedy_pass_at_1: float | None
    accuracy: float | None  # fraction fully solved by the selected candidate
    solved: int | None
    mean_pass_rate: float  # over all candidates of all problems
    any_solved: int  # problems with at least one fully passing candidate (not "any test passed")
    exact_match: float | None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["pass_at_k"] = {f"pass@{k}": v for k, v in self.pass_at_k.items()}
        return data


def summarize(outcomes: Sequence[ProblemOutcome], ks: Sequence[int] = (1, 5, 10)) -> EvalSummary:
    """Aggregate per-problem outcomes. pass@k is reported for each k ≤ the smallest n over problems."""
    if not outcomes:
        raise ValueError("summarize: no problems")
    min_n = min(o.n for o in outcomes)
    if min_n < 1:
        raise ValueError("summarize: every problem needs at least one candidate")
    pass_k = {k: mean_pass_at_k(((o.n, o.c) for o in outcomes), k) for k in ks if k <= min_n}
    selected = [o.selected_pass_rate for o in outcomes if o.selected_pass_rate is not None]
    if selected and len(selected) != len(outcomes):
        raise ValueError("summarize: selected_pass_rate must be given for all problems or none")
    solved = sum(1 for r in selected if is_solved(r)) if selected else None
    matches = [o.exact_match for o in outcomes if o.exact_match is not None]
    return EvalSummary(
        num_problems=len(outcomes),
        samples_per_problem=min_n,
        pass_at_k=pass_k,
        greedy_pass_at_1=(solved / len(outcomes)) if selected else None,
        accuracy=(solved / len(outcomes)) if selected else None,
        solved=solved,
        mean_pass_rate=float(np.mean([r for o in outcomes for r in o.pass_rates])),
        any_solved=sum(1 for o in outcomes if o.c > 0),
        exact_match=(sum(matches) / len(matches)) if matches else None,
    )


def p2value_stats(values: Sequence[float], bins: int = 10) -> dict[str, Any]:
    """Summary of P2Values: count, mean, std, min, quartiles, max and a histogram over [0, 1]."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return {"count": 0}
    hist, edges = np.histogram(arr, bins=bins, range=(0.0, 1.0))
    q = np.quantile(arr, [0.25, 0.5, 0.75])
    return {
        "count": int(arr.size),
        "mean": float(arr.mean()),
        "std": float(arr.std()),
        "min": float(arr.min()),
        "p25": float(q[0]),
        "median": float(q[1]),
        "p75": float(q[2]),
        "max": float(arr.max()),
        "histogram": {"counts": hist.tolist(), "edges": edges.tolist()},
    }


@dataclass
class CostRecord:
    """What a run cost: wall seconds per phase, tokens, CPU/GPU seconds and API dollars (when priced)."""

    phase_seconds: dict[str, float] = field(default_factory=dict)
    tokens_in: int = 0
    tokens_out: int = 0
    cpu_seconds: float = 0.0
    gpu_seconds: float = 0.0
    api_cost_usd: float | None = None

    def add_phase(self, phase: str, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"phase {phase!r}: seconds must be >= 0, got {seconds}")
        self.phase_seconds[phase] = self.phase_seconds.get(phase, 0.0) + seconds

    def add_tokens(self, tokens_in: int = 0, tokens_out: int = 0, usd: float | None = None) -> None:
        self.tokens_in += tokens_in
        self.tokens_out += tokens_out
        if usd is not None:
            self.api_cost_usd = (self.api_cost_usd or 0.0) + usd

    def merge(self, other: CostRecord) -> CostRecord:
        merged = CostRecord(
            dict(self.phase_seconds), self.tokens_in, self.tokens_out, self.cpu_seconds, self.gpu_seconds
        )
        for phase, seconds in other.phase_seconds.items():
            merged.add_phase(phase, seconds)
        merged.add_tokens(other.tokens_in, other.tokens_out)
        merged.cpu_seconds += other.cpu_seconds
        merged.gpu_seconds += other.gpu_seconds
        if self.api_cost_usd is not None or other.api_cost_usd is not None:
            merged.api_cost_usd = (self.api_cost_usd or 0.0) + (other.api_cost_usd or 0.0)
        return merged

    @property
    def wall_seconds(self) -> float:
        return sum(self.phase_seconds.values())

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "wall_seconds": self.wall_seconds}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CostRecord:
        return cls(**{k: v for k, v in data.items() if k != "wall_seconds"})
