"""One SPMD process for the multi-process tests: a small tensor-parallel block on a real mesh.

Run as ``python spmd_child.py OUT_DIR MESH N_CPU_DEVICES`` (multi-process: with JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES and JAX_PROCESS_ID in the environment).
It feeds its own rows of a fixed global batch, runs a jitted attention-like block whose weights are
laid out by the logical-axis table, and saves the rows it owns (``local_rows``) to
``OUT_DIR/rows-p{process_id}.npz``. The parent test compares every row with a 1-device run.
"""

from __future__ import annotations

import os
import sys

out_dir, mesh_spec, n_devices = sys.argv[1], sys.argv[2], sys.argv[3]
os.environ["JAX_NUM_CPU_DEVICES"] = n_devices
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")

import jax
import jax.numpy as jnp
import numpy as np

from arclens.distributed.mesh import make_mesh, use_mesh
from arclens.distributed.runtime import global_batch, initialize, local_batch_rows, local_rows
from arclens.distributed.sharding import logical_sharding

# The place in the job comes from JAX's own variables (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
# JAX_PROCESS_ID) when the parent sets them; no flags.
runtime = initialize()
assert jax.process_count() == runtime.num_processes, (jax.process_count(), runtime)

B, T, E, H, KV, D, F = 8, 6, 16, 4, 2, 4, 24
rng = np.random.default_rng(0)
weights = {
    "wq": (rng.standard_normal((E, H, D)), ("embed", "q_heads", "head_dim")),
    "wk": (rng.standard_normal((E, KV, D)), ("embed", "kv_heads", "head_dim")),
    "wo": (rng.standard_normal((H, D, E)), ("q_heads", "head_dim", "embed")),
    "up": (rng.standard_normal((E, F)), ("embed", "mlp")),
    "down": (rng.standard_normal((F, E)), ("mlp", "embed")),
}
x_all = rng.standard_normal((B, T, E)).astype(np.float32)

mesh = make_mesh(mesh_spec)
params = {
    name: jax.make_array_from_callback(
        w.shape, logical_sharding(mesh, axes, w.shape), lambda idx, w=w: w[idx].astype(np.float32)
    )
    for name, (w, axes) in weights.items()
}
batch_sharding = logical_sharding(mesh, ("batch", "seq", "embed"), (B, T, E))


def block(p, x):
    q = jnp.einsum("bte,ehd->bthd", x, p["wq"])
    k = jnp.repeat(jnp.einsum("bte,ekd->btkd", x, p["wk"]), H // KV, axis=2)
    att = jax.nn.softmax(jnp.einsum("bthd,bshd->bhts", q, k) / np.sqrt(D), axis=-1)
    mixed = jnp.einsum("bhts,bshd->bthd", att, q)
    resid = x + jnp.einsum("bthd,hde->bte", mixed, p["wo"])
    return resid + jnp.einsum("btf,fe->bte", jax.nn.gelu(resid @ p["up"]), p["down"])


with use_mesh(mesh):
    rows = local_batch_rows(batch_sharding, (B, T, E))
    x = global_batch(x_all[rows], batch_sharding, (B, T, E))
    y = jax.jit(block, out_shardings=batch_sharding)(params, x)
    owned = local_rows(y)

os.makedirs(out_dir, exist_ok=True)
np.savez(
    os.path.join(out_dir, f"rows-p{runtime.process_id}.npz"),
    starts=np.array([s.start for s, _ in owned], np.int64),
    **{f"rows{i}": a for i, (_, a) in enumerate(owned)},
)
print(f"process {runtime.process_id}/{runtime.num_processes} fed rows {rows.start}:{rows.stop}, "
      f"owns {[(s.start, s.stop) for s, _ in owned]}", flush=True)
