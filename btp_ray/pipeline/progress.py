"""Progress the user can see: a tqdm bar per phase (counts and rates; plain lines when stdout is not a terminal, so
``ray job logs`` shows them), one fixed-width summary line per iteration, and custom Ray metrics for the dashboard.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from tqdm import tqdm

logger = logging.getLogger(__name__)


def phase_bar(description: str, total: int, unit: str) -> tqdm:
    """A progress bar for one phase; on a non-terminal it prints at most every 10 s."""
    interactive = sys.stderr.isatty()
    return tqdm(
        total=total,
        desc=f"{description:<14}",
        unit=unit,
        dynamic_ncols=interactive,
        ncols=None if interactive else 100,
        mininterval=0.5 if interactive else 10.0,
        file=sys.stderr,
        leave=True,
    )


def iteration_line(iteration: int, summary: dict[str, Any]) -> str:
    """One fixed-width line per iteration (what a user greps in ``ray job logs``)."""

    def fmt(key: str, width: int = 6, digits: int = 3) -> str:
        value = summary.get(key)
        return f"{value:>{width}.{digits}f}" if isinstance(value, (int, float)) else f"{'-':>{width}}"

    return (
        f"iter {iteration:>3} | cand {summary.get('candidates', 0):>5} | pass {fmt('train_mean_pass_rate')} "
        f"| p2v {fmt('p2value_mean')} | buffer {summary.get('buffer_size', 0):>6} | loss {fmt('loss')} "
        f"| eval@1 {fmt('eval_pass_at_1')} | RSR {fmt('rsr', 7, 1)} | {summary.get('wall_s', 0.0):>7.1f}s"
    )


class RunMetrics:
    """Custom Ray metrics (``ray.util.metrics``) shown in the dashboard's metrics view and Prometheus export.

    Created only when Ray is initialised; a failure to register (e.g. no metrics agent) degrades to logging.
    """

    NAMES = (
        "btp_samples_per_second",
        "btp_tests_per_second",
        "btp_candidates_total",
        "btp_sandbox_results_total",
        "btp_buffer_size",
        "btp_p2value_mean",
        "btp_mean_pass_rate",
        "btp_train_loss",
        "btp_train_tokens_per_second",
        "btp_train_peak_memory_mb",
        "btp_eval_pass_at_1",
    )

    def __init__(self, run_name: str) -> None:
        self.tags = {"run": run_name}
        self._gauges: dict[str, Any] = {}
        self._counters: dict[str, Any] = {}
        try:
            from ray.util.metrics import Counter, Gauge

            for name in self.NAMES:
                if name.endswith("_total"):
                    keys = ("run", "status") if name == "btp_sandbox_results_total" else ("run",)
                    self._counters[name] = Counter(name, description=name.replace("_", " "), tag_keys=keys)
                else:
                    self._gauges[name] = Gauge(name, description=name.replace("_", " "), tag_keys=("run",))
        except Exception as exc:  # metrics are for watching, never a reason to fail a run
            logger.warning("Ray metrics unavailable: %s", exc)

    def gauge(self, name: str, value: float) -> None:
        if name in self._gauges and value is not None:
            self._gauges[name].set(float(value), tags=self.tags)

    def count(self, name: str, value: float = 1.0, **tags: str) -> None:
        if name in self._counters and value > 0:
            self._counters[name].inc(float(value), tags={**self.tags, **tags})


class RateMeter:
    """Items per second since creation (for the samples/s and tests/s gauges)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.count = 0

    def add(self, n: int) -> float:
        self.count += n
        elapsed = time.perf_counter() - self.start
        return self.count / elapsed if elapsed > 0 else 0.0
