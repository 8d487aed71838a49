"""The logical-axis table: what shards, what is replicated, and that replication is logged once."""

from __future__ import annotations

import logging

import pytest
from jax.sharding import AbstractMesh, PartitionSpec

from arclens.distributed import sharding
from arclens.distributed.sharding import DEFAULT_RULES, partition_spec

# partition_spec only needs the mesh's axis sizes, so an AbstractMesh stands in for 8 devices
# inside this 1-device test process. Real devices are exercised in test_mesh.py's subprocesses.
MESH_2x4 = AbstractMesh((2, 4), ("data", "model"))
MESH_8x1 = AbstractMesh((8, 1), ("data", "model"))


@pytest.fixture(autouse=True)
def _fresh_log_once():
    sharding._logged.clear()
    yield
    sharding._logged.clear()


def test_table_names_every_logical_axis_the_model_uses():
    assert set(DEFAULT_RULES) == {"batch", "seq", "vocab", "embed", "q_heads", "kv_heads", "head_dim", "mlp"}
    assert set(DEFAULT_RULES.values()) <= {"data", "model", None}


def test_heads_and_mlp_shard_over_model_batch_over_data():
    assert partition_spec(MESH_2x4, ("embed", "q_heads", "head_dim"), (896, 16, 64)) == PartitionSpec(None, "model", None)
    assert partition_spec(MESH_2x4, ("embed", "mlp"), (896, 4864)) == PartitionSpec(None, "model")
    assert partition_spec(MESH_2x4, ("mlp", "embed"), (4864, 896)) == PartitionSpec("model", None)
    assert partition_spec(MESH_2x4, ("vocab", "embed"), (151936, 896)) == PartitionSpec("model", None)
    assert partition_spec(MESH_2x4, ("batch", "seq", "embed"), (8, 128, 896)) == PartitionSpec("data", None, None)


def test_uneven_dimension_is_replicated_and_logged_once(caplog):
    caplog.set_level(logging.INFO, logger="arclens.distributed.sharding")
    for _ in range(3):
        # Qwen2.5-0.5B: 14 query heads and 2 KV heads on model=4 -> neither divides.
        assert partition_spec(MESH_2x4, ("embed", "kv_heads", "head_dim"), (896, 2, 64)) == PartitionSpec(None, None, None)
        assert partition_spec(MESH_2x4, ("embed", "q_heads", "head_dim"), (896, 14, 64)) == PartitionSpec(None, None, None)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("kv_heads=2 does not divide mesh axis model=4" in m for m in messages) == 1
    assert sum("q_heads=14 does not divide mesh axis model=4" in m for m in messages) == 1


def test_size_one_mesh_axis_never_shards_or_logs(caplog):
    caplog.set_level(logging.INFO, logger="arclens.distributed.sharding")
    assert partition_spec(MESH_8x1, ("embed", "kv_heads", "head_dim"), (896, 2, 64)) == PartitionSpec(None, None, None)
    assert not caplog.records


def test_a_mesh_axis_is_used_once_per_array():
    # vocab and mlp both map to "model"; a PartitionSpec cannot name it twice.
    spec = partition_spec(MESH_2x4, ("vocab", "mlp"), (8, 8))
    assert spec == PartitionSpec("model", None)


def test_custom_rules_and_bad_input():
    rules = dict(DEFAULT_RULES, embed="model", q_heads=None)
    assert partition_spec(MESH_2x4, ("embed", "q_heads"), (896, 16), rules) == PartitionSpec("model", None)
    with pytest.raises(ValueError, match="not in the sharding rules"):
        partition_spec(MESH_2x4, ("experts",), (8,))
    with pytest.raises(ValueError, match="do not match shape"):
        partition_spec(MESH_2x4, ("embed",), (8, 8))
    with pytest.raises(ValueError, match="absent from mesh"):
        partition_spec(MESH_2x4, ("embed",), (8,), {"embed": "fsdp"})
