"""Planning a cluster run before starting it: model shapes known offline, GPU memory estimates (DeepSpeed's ZeRO
formulas, vLLM's weights and KV cache) and the placement planner behind ``btp plan``."""

from btp_ray.planning.planner import Placement, Plan, PlanRefused, PlanRequest, plan
from btp_ray.planning.shapes import KNOWN_SHAPES, ModelShape, UnknownShapeError, model_shape

__all__ = [
    "KNOWN_SHAPES",
    "ModelShape",
    "Placement",
    "Plan",
    "PlanRefused",
    "PlanRequest",
    "UnknownShapeError",
    "model_shape",
    "plan",
]
