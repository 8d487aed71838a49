"""Logical axes -> mesh axes: the one table that decides how every array is laid out.

Model code names the *meaning* of each dimension (``("embed", "q_heads", "head_dim")``); this module
turns that into a ``NamedSharding`` on the ``("data", "model")`` mesh. Keeping the mapping in one
table means tensor parallelism is a property of the mesh shape, not of the model code.

A dimension whose size does not divide its mesh axis (2 KV heads on ``model=4``, 14 query heads on
``model=4``) is replicated instead: JAX rejects uneven shards, and replicating a small dimension
costs memory, never correctness. Each such decision is logged once per process so a user can see
why a mesh shape is slower than expected.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping, Sequence

from jax.sharding import Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

MeshAxes = str | tuple[str, ...] | None

# Batches shard over "data"; parameters shard over "model" (Megatron-style tensor parallelism:
# attention heads and MLP columns, plus the vocabulary for the embedding / LM head). Sequence,
# embedding width and head_dim stay whole on every device so no op needs a collective inside them.
DEFAULT_RULES: Mapping[str, MeshAxes] = {
    "batch": "data",
    "seq": None,
    "vocab": "model",
    "embed": None,
    "q_heads": "model",
    "kv_heads": "model",
    "head_dim": None,
    "mlp": "model",
}

_logged: set[tuple] = set()
_logged_lock = threading.Lock()


def _log_once(key: tuple, msg: str, *args) -> None:
    with _logged_lock:
        if key in _logged:
            return
        _logged.add(key)
    log.info(msg, *args)


def _as_tuple(axes: MeshAxes) -> tuple[str, ...]:
    if axes is None:
        return ()
    if isinstance(axes, str):
        return (axes,)
    return tuple(axes)


def partition_spec(
    mesh: Mesh,
    logical_axes: Sequence[str | None],
    shape: Sequence[int],
    rules: Mapping[str, MeshAxes] = DEFAULT_RULES,
) -> PartitionSpec:
    """The PartitionSpec for an array of ``shape`` whose dimensions mean ``logical_axes``.

    ``None`` in ``logical_axes`` means "always replicated". A mesh axis is used at most once per
    array (the first dimension that claims it and divides evenly wins) because a PartitionSpec
    cannot name a mesh axis twice.
    """
    if len(logical_axes) != len(shape):
        raise ValueError(f"logical axes {tuple(logical_axes)} do not match shape {tuple(shape)}")
    used: set[str] = set()
    spec: list[MeshAxes] = []
    for name, size in zip(logical_axes, shape):
        if name is None:
            spec.append(None)
            continue
        if name not in rules:
            raise ValueError(f"logical axis {name!r} is not in the sharding rules {sorted(rules)}")
        wanted = tuple(a for a in _as_tuple(rules[name]) if mesh.shape.get(a, 1) > 1)
        missing = [a for a in _as_tuple(rules[name]) if a not in mesh.shape]
        if missing:
            raise ValueError(f"rule {name!r} -> {rules[name]!r} names axes {missing} absent from mesh {mesh.shape}")
        if not wanted:
            spec.append(None)
            continue
        if used & set(wanted):
            _log_once(
                ("reuse", name, wanted),
                "sharding: %s also maps to mesh axis %s, already used by another dimension; replicated",
                name, "/".join(wanted),
            )
            spec.append(None)
            continue
        n_shards = math.prod(mesh.shape[a] for a in wanted)
        if size % n_shards:
            _log_once(
                ("uneven", name, int(size), wanted, n_shards),
                "sharding: %s=%d does not divide mesh axis %s=%d; replicated on that axis",
                name, size, "*".join(wanted), n_shards,
            )
            spec.append(None)
            continue
        used.update(wanted)
        spec.append(wanted[0] if len(wanted) == 1 else wanted)
    return PartitionSpec(*spec)


def logical_sharding(
    mesh: Mesh,
    logical_axes: Sequence[str | None],
    shape: Sequence[int],
    rules: Mapping[str, MeshAxes] = DEFAULT_RULES,
) -> NamedSharding:
    """``NamedSharding`` for an array whose dimensions mean ``logical_axes`` (see module doc)."""
    return NamedSharding(mesh, partition_spec(mesh, logical_axes, shape, rules))
