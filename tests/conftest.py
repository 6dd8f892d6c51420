"""Shared fixtures: a local Ray cluster on loopback, the data directory, GPU detection."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# Ray 2.60 binds to the public interface unless told otherwise; tests stay on loopback.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if "BTP_DATA_DIR" not in os.environ and SHARED_DATA.is_dir():
    os.environ["BTP_DATA_DIR"] = str(SHARED_DATA)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The directory holding MBPP (``$BTP_DATA_DIR``); tests that need it skip when it is absent."""
    path = Path(os.environ.get("BTP_DATA_DIR", SHARED_DATA))
    if not (path / "mbpp" / "mbpp.jsonl").is_file():
        pytest.skip(f"MBPP data not found under {path} (set BTP_DATA_DIR)")
    return path


@pytest.fixture(scope="session")
def ray_cluster():
    """A session-wide local Ray cluster with 2 CPUs on loopback, shut down at the end."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        namespace="btp-tests",
    )
    try:
        yield ray
    finally:
        from btp_ray.pipeline.services import shutdown_ray

        shutdown_ray(timeout_s=20)  # a normal shutdown takes 1-5 s; see shutdown_ray for the hang it guards
