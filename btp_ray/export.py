"""``btp export``: a servable model out of a run directory.

Without ``--merge`` the chosen iteration's PEFT adapter is copied with ``SERVING.md``, a ready vLLM command line
(OpenAI-compatible server with ``--lora-modules``) and the ``LoRARequest`` lines for vLLM's Python API. With
``--merge`` the adapter is folded into the base model and written in Hugging Face format (safetensors weights,
config, tokenizer, generation config) that ``transformers`` and vLLM load as is, with no PEFT at serving time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXIT_USAGE = 2
SERVING = "SERVING.md"
EXPORT_RECORD = "btp_export.json"
_VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # values vLLM accepts for max_lora_rank


class ExportError(ValueError):
    """Bad input to ``btp export``: the message names the argument and the fix."""


@dataclass(frozen=True)
class AdapterChoice:
    """The adapter a run produced at ``iteration``, and the base model it was trained on."""

    run_dir: Path
    iteration: int
    path: Path
    manifest: Any  # btp_ray.training.AdapterManifest

    @property
    def is_full_model(self) -> bool:
        return self.manifest.adapter_kind == "full"

    def base_model_path(self) -> str:
        """The base model's directory (or hub id): resolved again here, else the path the learner recorded."""
        from btp_ray.training.config import LearnerError
        from btp_ray.training.modeling import resolve_base_model_path

        try:
            return resolve_base_model_path(self.manifest.base_model)
        except LearnerError:
            if Path(self.manifest.base_model_path).is_dir():
                return self.manifest.base_model_path
            raise ExportError(
                f"base model {self.manifest.base_model!r} of {self.path} is not available here; install or download "
                "it, then export again"
            ) from None


def find_adapter(run_dir: str | Path, iteration: int | None = None) -> AdapterChoice:
    """The adapter of ``iteration`` (default: the last one trained) in ``run_dir``; :class:`ExportError` if none."""
    from btp_ray.training import AdapterManifest

    run = Path(run_dir)
    if not run.is_dir():
        raise ExportError(f"RUN_DIR: {run} does not exist; pass a run directory (results/btp_<timestamp>)")
    adapters = run / "adapters"
    trained = sorted(
        (int(p.name.removeprefix("iter_")), p)
        for p in adapters.glob("iter_*")
        if p.name.removeprefix("iter_").isdigit() and (p / "manifest.json").is_file()
    )
    if not trained:
        raise ExportError(f"RUN_DIR: {run} has no trained adapter under adapters/ (a btp_only or API-only run?)")
    if iteration is None:
        number, path = trained[-1]
    else:
        matches = [(n, p) for n, p in trained if n == iteration]
        if not matches:
            raise ExportError(
                f"--iteration: {run} has adapters for iterations {[n for n, _ in trained]}, not {iteration}"
            )
        number, path = matches[0]
    return AdapterChoice(run, number, path, AdapterManifest.read(path))


def export_adapter(choice: AdapterChoice, out: Path) -> Path:
    """Copy the PEFT adapter to ``out`` with ``SERVING.md`` (vLLM server command and ``LoRARequest`` snippet)."""
    if choice.is_full_model:
        raise ExportError(
            f"--merge: iteration {choice.iteration} trained all weights (no adapter); export with --merge"
        )
    base = choice.base_model_path()
    shutil.copytree(choice.path, out, dirs_exist_ok=True)
    rank = json.loads((out / "adapter_config.json").read_text())["r"]
    (out / SERVING).write_text(serving_text(base, out, choice.manifest.adapter_name, rank), encoding="utf-8")
    _record(out, choice, base, merged=False)
    return out


def export_merged(choice: AdapterChoice, out: Path) -> Path:
    """The base model with the adapter merged in, in Hugging Face format (weights, config, tokenizer, generation
    config), loadable by ``AutoModelForCausalLM.from_pretrained(out)`` and ``vllm.LLM(out)``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    base = choice.base_model_path()
    if choice.is_full_model:
        model = AutoModelForCausalLM.from_pretrained(choice.path, dtype="auto")
    else:
        from peft import PeftModel

        model = AutoModelForCausalLM.from_pretrained(base, dtype="auto")
        model = PeftModel.from_pretrained(model, str(choice.path)).merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    try:
        generation = GenerationConfig.from_pretrained(base)
    except OSError:  # the base model has none: derive it from the model config
        generation = GenerationConfig.from_model_config(model.config)
    generation.save_pretrained(out)
    (out / SERVING).write_text(serving_text(str(out.resolve()), None, None, None), encoding="utf-8")
    _record(out, choice, base, merged=True)
    return out


def serving_text(model: str, adapter: Path | None, name: str | None, rank: int | None) -> str:
    """How to serve an export with vLLM: the OpenAI-compatible server command and the Python API."""
    if adapter is None:
        server = f"python -m vllm.entrypoints.openai.api_server --host 127.0.0.1 --model {model}"
        python = (
            "from vllm import LLM, SamplingParams\n\n"
            f'llm = LLM(model="{model}")\n'
            'outputs = llm.generate(["def fib(n):"], SamplingParams(temperature=0.0, max_tokens=256))\n'
        )
        extra = "The folder is a plain Hugging Face model: `AutoModelForCausalLM.from_pretrained` loads it too.\n"
    else:
        adapter_path = str(Path(adapter).resolve())
        max_rank = next((r for r in _VLLM_LORA_RANKS if r >= (rank or 8)), rank)
        server = (
            f"python -m vllm.entrypoints.openai.api_server --host 127.0.0.1 --model {model} \\\n"
            f"    --enable-lora --max-lora-rank {max_rank} --lora-modules {name}={adapter_path}"
        )
        python = (
            "from vllm import LLM, SamplingParams\n"
            "from vllm.lora.request import LoRARequest\n\n"
            f'llm = LLM(model="{model}", enable_lora=True, max_lora_rank={max_rank})\n'
            f'adapter = LoRARequest("{name}", 1, "{adapter_path}")\n'
            'outputs = llm.generate(["def fib(n):"], SamplingParams(temperature=0.0, max_tokens=256), '
            "lora_request=adapter)\n"
        )
        extra = f'Requests to the server name the adapter as the model: `"model": "{name}"`.\n'
    return (
        "# Serving this export with vLLM\n\n"
        "OpenAI-compatible server (`vllm serve` takes the same arguments where its entry point is installed):\n\n"
        f"```bash\n{server}\n```\n\nPython:\n\n```python\n{python}```\n\n{extra}"
    )


def _record(out: Path, choice: AdapterChoice, base: str, *, merged: bool) -> None:
    from btp_ray.io import atomic_write_json

    atomic_write_json(
        out / EXPORT_RECORD,
        {
            "run_dir": str(choice.run_dir.resolve()),
            "iteration": choice.iteration,
            "adapter": choice.manifest.adapter_name,
            "base_model": choice.manifest.base_model,
            "base_model_path": base,
            "merged": merged,
        },
    )


def export_run(run_dir: str | Path, out: str | Path, *, iteration: int | None = None, merge: bool = False) -> Path:
    """Export a run's adapter (or, with ``merge``, the merged model) to ``out`` (which must be new or empty)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"--out: {out} exists and is not empty; pick a new directory")
    choice = find_adapter(run_dir, iteration)
    choice.base_model_path()  # fail on a missing base model before writing anything
    return export_merged(choice, out) if merge else export_adapter(choice, out)


def main(argv: Sequence[str] | None = None) -> int:
    """``btp export RUN_DIR [--iteration N] [--merge] --out DIR``."""
    parser = argparse.ArgumentParser(
        prog="btp export",
        description="Write a run's LoRA adapter (with a vLLM serving snippet) or, with --merge, the merged model in "
        "Hugging Face format.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run directory (results/btp_<timestamp>)")
    parser.add_argument("--iteration", type=int, default=None, help="which iteration's adapter (default: the last)")
    parser.add_argument("--merge", action="store_true", help="merge the adapter into the base model (HF format)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (new or empty)")
    args = parser.parse_args(argv)
    try:
        out = export_run(args.run_dir, args.out, iteration=args.iteration, merge=args.merge)
    except ExportError as exc:
        print(f"btp export: {exc}", file=sys.stderr)
        return EXIT_USAGE
    kind = "merged model" if args.merge else "adapter"
    print(f"exported the {kind} to {out}\n")
    print((out / SERVING).read_text(encoding="utf-8"))
    return 0
