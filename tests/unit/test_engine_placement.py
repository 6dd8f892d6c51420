"""Engine placement logic without Ray: learner GPUs from the last node back, engines round-robin over nodes with
``tensor_parallel_size`` GPUs of one node each, colocation sharing GPUs, and a clear error when engines do not fit."""

from __future__ import annotations

import pytest

from btp_ray.sampling.placement import EnginePlacementConfig, LearnerPlacement, PlacementError, assign_engines

TWO_NODES = {"a": 8, "b": 8}


def test_split_keeps_the_learner_on_the_last_node_and_spreads_engines():
    config = EnginePlacementConfig(num_engines=3, tensor_parallel_size=2, learner_gpus=4)
    result = assign_engines(TWO_NODES, config)
    assert result.learner_nodes == ("b",) * 4
    assert result.engine_nodes == ("a", "b", "a")


def test_split_engines_never_take_the_learners_gpus():
    config = EnginePlacementConfig(num_engines=4, tensor_parallel_size=2, learner_gpus=8)
    assert assign_engines(TWO_NODES, config).engine_nodes == ("a",) * 4
    with pytest.raises(PlacementError, match="do not fit"):
        assign_engines(TWO_NODES, EnginePlacementConfig(num_engines=5, tensor_parallel_size=2, learner_gpus=8))


def test_an_engine_never_spans_two_nodes():
    # 3 + 3 free GPUs hold six GPUs in all, but a TP-4 engine needs four on one node.
    with pytest.raises(PlacementError, match="one node"):
        assign_engines({"a": 3, "b": 3}, EnginePlacementConfig(num_engines=1, tensor_parallel_size=4))


def test_colocated_engines_use_every_gpu_and_reserve_none_for_the_learner():
    config = EnginePlacementConfig(num_engines=4, tensor_parallel_size=4, learner="colocate", learner_gpus=16)
    result = assign_engines(TWO_NODES, config)
    assert result.engine_nodes == ("a", "b", "a", "b") and result.learner_nodes == ()
    assert config.learner is LearnerPlacement.COLOCATE and config.bundle_share == 0.5


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="engine_share"):
        EnginePlacementConfig(engine_share=0)
    with pytest.raises(PlacementError, match="learner_gpus=20"):
        assign_engines(TWO_NODES, EnginePlacementConfig(learner_gpus=20))
