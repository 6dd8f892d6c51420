"""Where sampler engines run on a multi-node Ray cluster: one placement group per vLLM engine holding
``tensor_parallel_size`` accelerator bundles packed on one node (``STRICT_PACK``), engines spread round-robin over the
nodes, and the learner either on GPUs of its own (``split``: whole nodes, from the last one back, kept free of
engines) or sharing each GPU with an engine (``colocate``: fractional bundles).

Engines are pinned to the node chosen for them with Ray's built-in ``ray.io/node-id`` label, so "spread" is a
decision made here, not a scheduler tendency. ``accelerator`` names the resource that stands for a GPU: ``GPU`` on a
cluster, a custom resource when the logic is exercised on CPU nodes. :func:`assign_engines` is the plain logic
(unit-testable without Ray); :class:`EnginePlacement` reserves the groups.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

NODE_ID_LABEL = "ray.io/node-id"


class PlacementError(RuntimeError):
    """The cluster cannot hold the engines (and learner) as configured."""


class LearnerPlacement(str, enum.Enum):
    SPLIT = "split"  # learner ranks on GPUs no engine uses (whole nodes first)
    COLOCATE = "colocate"  # each engine bundle takes ``engine_share`` of a GPU, the learner the rest


@dataclass(frozen=True)
class EnginePlacementConfig:
    """How engines (and the learner's GPUs) are laid out. ``learner_gpus`` is only reserved in ``split`` mode."""

    num_engines: int = 1
    tensor_parallel_size: int = 1
    accelerator: str = "GPU"
    cpus_per_bundle: float = 1.0
    learner: LearnerPlacement = LearnerPlacement.SPLIT
    learner_gpus: int = 0
    engine_share: float = 0.5
    ready_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "learner", LearnerPlacement(self.learner))
        if self.num_engines < 1 or self.tensor_parallel_size < 1:
            raise ValueError("EnginePlacementConfig: num_engines and tensor_parallel_size must be >= 1")
        if self.learner_gpus < 0 or self.cpus_per_bundle < 0:
            raise ValueError("EnginePlacementConfig: learner_gpus and cpus_per_bundle must be >= 0")
        if not 0 < self.engine_share <= 1:
            raise ValueError(f"EnginePlacementConfig.engine_share must be in (0, 1], got {self.engine_share}")

    @property
    def bundle_share(self) -> float:
        return self.engine_share if self.learner is LearnerPlacement.COLOCATE else 1.0


@dataclass(frozen=True)
class Assignment:
    """Node of each engine and of each learner rank (split mode; colocated ranks go where the engines are)."""

    engine_nodes: tuple[str, ...]
    learner_nodes: tuple[str, ...] = field(default=())


def assign_engines(capacity: Mapping[str, float], config: EnginePlacementConfig) -> Assignment:
    """Choose nodes: learner GPUs (split) from the last node back, then engines round-robin, ``tp`` per node each.

    ``capacity`` maps node id to its accelerator count, in a stable order. Raises :class:`PlacementError`.
    """
    free = {node: int(count) for node, count in capacity.items()}
    learner_nodes: list[str] = []
    if config.learner is LearnerPlacement.SPLIT:
        for node in reversed(list(free)):
            take = min(free[node], config.learner_gpus - len(learner_nodes))
            free[node] -= take
            learner_nodes += [node] * take
        if len(learner_nodes) < config.learner_gpus:
            raise PlacementError(f"learner_gpus={config.learner_gpus}: the cluster has {sum(capacity.values()):g}")
    tp = config.tensor_parallel_size
    slots = {
        node: count if config.learner is LearnerPlacement.SPLIT else capacity[node] for node, count in free.items()
    }
    engines: list[str] = []
    while len(engines) < config.num_engines:
        placed = False
        for node in slots:
            if slots[node] >= tp and len(engines) < config.num_engines:
                slots[node] -= tp
                engines.append(node)
                placed = True
        if not placed:
            raise PlacementError(
                f"{config.num_engines} engine(s) x tensor parallel {tp} do not fit: nodes offer "
                f"{dict(free)} free {config.accelerator} after the learner's {config.learner_gpus}; one engine's "
                f"GPUs must be on one node"
            )
    return Assignment(tuple(engines), tuple(sorted(learner_nodes, key=list(capacity).index)))


def accelerator_capacity(accelerator: str) -> dict[str, float]:
    """Alive nodes offering ``accelerator``, by node id, in the order Ray lists them."""
    import ray

    nodes = [node for node in ray.nodes() if node.get("Alive") and node["Resources"].get(accelerator, 0) > 0]
    return {node["NodeID"]: node["Resources"][accelerator] for node in sorted(nodes, key=lambda n: n["NodeID"])}


class EnginePlacement:
    """Reserves one ``STRICT_PACK`` placement group per engine, each pinned to its assigned node."""

    def __init__(self, config: EnginePlacementConfig, capacity: Mapping[str, float] | None = None) -> None:
        import ray
        from ray.util.placement_group import placement_group, remove_placement_group

        self.config = config
        self.assignment = assign_engines(capacity or accelerator_capacity(config.accelerator), config)
        bundle = {config.accelerator: config.bundle_share}
        if config.cpus_per_bundle:
            bundle["CPU"] = config.cpus_per_bundle
        self.groups: list[Any] = []
        try:
            for index, node in enumerate(self.assignment.engine_nodes):
                group = placement_group(
                    [dict(bundle) for _ in range(config.tensor_parallel_size)],
                    strategy="STRICT_PACK",
                    name=f"btp-engine-{index}",
                    bundle_label_selector=[{NODE_ID_LABEL: node}] * config.tensor_parallel_size,
                )
                self.groups.append(group)
            ready = [group.ready() for group in self.groups]
            _, pending = ray.wait(ready, num_returns=len(ready), timeout=config.ready_timeout_s)
            if pending:
                raise PlacementError(
                    f"{len(pending)} engine placement group(s) not ready after {config.ready_timeout_s:g} s: the "
                    f"nodes lack free {config.accelerator} or CPU (another job holds them?)"
                )
        except BaseException:
            for group in self.groups:
                remove_placement_group(group)
            raise

    def scheduling_strategy(self, engine: int) -> Any:
        """Where engine ``engine``'s actor runs: its group, with vLLM's tensor-parallel workers captured into it."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return PlacementGroupSchedulingStrategy(
            placement_group=self.groups[engine],
            placement_group_bundle_index=0,
            placement_group_capture_child_tasks=True,
        )

    def bundle_nodes(self) -> list[list[str]]:
        """For each engine, the node id each of its bundles landed on (from the GCS)."""
        from ray.util.placement_group import placement_group_table

        return [
            [table["bundles_to_node_id"][i] for i in sorted(table["bundles_to_node_id"])]
            for table in (placement_group_table(group) for group in self.groups)
        ]

    def learner_label_selector(self) -> list[dict[str, str]] | None:
        """Per-rank label selectors for Ray Train's ``ScalingConfig(label_selector=...)``: split mode pins each rank
        to its reserved node; colocated ranks may go to any engine node (None)."""
        if self.config.learner is LearnerPlacement.COLOCATE or not self.assignment.learner_nodes:
            return None
        return [{NODE_ID_LABEL: node} for node in self.assignment.learner_nodes]

    def learner_accelerator_share(self) -> float:
        """What each learner rank asks of its GPU: the rest of it when colocated, all of it when split."""
        return 1.0 - self.config.engine_share if self.config.learner is LearnerPlacement.COLOCATE else 1.0

    def remove(self) -> None:
        from ray.util.placement_group import remove_placement_group

        for group in self.groups:
            remove_placement_group(group)
        self.groups = []
