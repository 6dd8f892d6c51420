"""GPU tests: skipped unless torch sees a CUDA device (CI never has one). A small random-weight Llama is built on the
GPU machine itself (nothing can be downloaded there); its tokenizer comes from ``$BTP_TOKENIZER_DIR`` where the
embedded model's package is not installed, else from the embedded model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "tests/gpu" in str(item.fspath):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tokenizer_dir() -> Path:
    if os.environ.get("BTP_TOKENIZER_DIR"):
        return Path(os.environ["BTP_TOKENIZER_DIR"])
    from btp_ray.models import embedded_model_dir

    return embedded_model_dir()


@pytest.fixture(scope="session")
def gpu_llama(tmp_path_factory, tokenizer_dir) -> Path:
    """A 4-layer random Llama (hidden 256) with the real tokenizer, written by the GPU."""
    from btp_ray.sampling.random_model import LlamaShape, build_random_llama

    shape = LlamaShape(hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=4, intermediate_size=512)
    return build_random_llama(tmp_path_factory.mktemp("gpu-llama"), tokenizer_dir, shape, device="cuda")
