"""The Qwen2 forward pass on a mesh, in a fresh process (device count is fixed at JAX start-up).

``python model_child.py MODEL_DIR MESH N_CPU_DEVICES OUT.npz [COORDINATOR N_PROCESSES PROCESS_ID]``.
MESH ``none`` means: no mesh, weights on one device (the unsharded reference). Saves the rows of
every capture that this process owns (``local_rows``), keyed by hook, with their row offsets.
"""

from __future__ import annotations

import os
import sys

model_dir, mesh_spec, n_devices, out_file = sys.argv[1:5]
os.environ["JAX_NUM_CPU_DEVICES"] = n_devices
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")

import functools

import jax
import jax.numpy as jnp
import numpy as np

from arclens.distributed.mesh import make_mesh, use_mesh
from arclens.distributed.runtime import (
    ProcessSettings,
    global_batch,
    initialize,
    local_batch_rows,
    local_rows,
)
from arclens.distributed.sharding import logical_sharding
from arclens.model.config import QwenConfig
from arclens.model.loading import load_params
from arclens.model.qwen import forward

process = None  # the deployment environment alone
if len(sys.argv) > 5:
    process = ProcessSettings.from_flags(sys.argv[5], int(sys.argv[6]), int(sys.argv[7]))
runtime = initialize(process)

HOOKS = ("blocks.0.hook_resid_pre", "blocks.1.hook_attn_out", "blocks.2.hook_mlp_out", "blocks.3.hook_resid_post")
B, T = 4, 24
config = QwenConfig.from_pretrained(model_dir)
rng = np.random.default_rng(1)
tokens_all = rng.integers(0, config.vocab_size, (B, T)).astype(np.int32)
lengths_all = np.array([T, 17, 9, 20], np.int32)  # right-padded rows, as the pipeline sends them
fwd = functools.partial(forward, config=config, hooks=HOOKS)

if mesh_spec == "none":
    params = load_params(model_dir, config, jnp.float32)
    out = jax.jit(lambda p, t, n: fwd(p, tokens=t, lengths=n))(params, tokens_all, lengths_all)
    owned = {h: [(slice(0, B), np.asarray(a))] for h, a in out.items()}
else:
    mesh = make_mesh(mesh_spec)
    params = load_params(model_dir, config, jnp.float32, mesh=mesh)
    tok_sharding = logical_sharding(mesh, ("batch", "seq"), (B, T))
    len_sharding = logical_sharding(mesh, ("batch",), (B,))
    out_sharding = logical_sharding(mesh, ("batch", "seq", "embed"), (B, T, config.hidden_size))
    with use_mesh(mesh):
        rows = local_batch_rows(tok_sharding, (B, T))
        tokens = global_batch(tokens_all[rows], tok_sharding, (B, T))
        lengths = global_batch(lengths_all[rows], len_sharding, (B,))
        out = jax.jit(lambda p, t, n: fwd(p, tokens=t, lengths=n), out_shardings=out_sharding)(params, tokens, lengths)
        owned = {h: local_rows(a) for h, a in out.items()}

arrays = {"lengths": lengths_all}
for h, parts in owned.items():
    for i, (rows, a) in enumerate(parts):
        arrays[f"{h}|{rows.start}|{i}"] = a
np.savez(out_file, **arrays)
print(f"process {runtime.process_id}/{runtime.num_processes} mesh {mesh_spec}: saved {len(arrays) - 1} pieces", flush=True)
