"""What runs on the device for each batch: the SAE encode, the per-latent reductions, and the
firing (latent, token) pairs as a sparse list.

The mass by role is one matmul: the activations ``z [N, F]`` against a one-hot matrix of the
tokens' roles ``[N, R]`` (features/layout.py), so adding a role costs a column, not a pass. (The
firing counts by role and activation interval, for coverage, come from the sparse pairs on the
host: they are ``nnz x 8`` additions, against ``N x F x R x Q`` on the device.) Everything that leaves the device is ``[F]``,
``[F, R]`` or the sparse pairs; ``z`` itself never does. Matmuls run at full float32 precision
(GPUs would otherwise use TF32 and move firing decisions near zero).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from arclens.features.layout import BLOCKS, GRID_KINDS, MAX_SIDE, N_COLOURS
from arclens.sae import SAE, encode

ROLE_FIELDS = ("kind", "colour", "shown", "row", "col", "border")


def role_matrix(kind, colour, shown, row, col, border) -> jax.Array:
    """``[N, R]`` float32 one-hot of each token's roles (all zero for a token that is not a cell)."""
    is_cell = kind >= 0

    def one_hot(x, n):
        return jax.nn.one_hot(x, n, dtype=jnp.float32)  # -1 (not a cell) is all zeros

    parts = {
        "cell": is_cell[:, None].astype(jnp.float32),
        "grid_kind": one_hot(kind, len(GRID_KINDS)),
        "colour": one_hot(colour, N_COLOURS),
        "shown_colour": one_hot(shown, N_COLOURS),
        "row": one_hot(row, MAX_SIDE),
        "col": one_hot(col, MAX_SIDE),
        "border": (border == 1)[:, None].astype(jnp.float32),
        "colour_grid": one_hot(jnp.where(is_cell, kind.astype(jnp.int32) * N_COLOURS + colour, -1),
                               len(GRID_KINDS) * N_COLOURS),
    }
    return jnp.concatenate([parts[name] for name in BLOCKS], axis=1)


@jax.jit
def batch_stats(sae: SAE, x, valid, kind, colour, shown, row, col, border):
    """Encode one padded batch and reduce it. Returns (z [N, F] float32, stats)."""
    with jax.default_matmul_precision("float32"):
        z = encode(sae, x).astype(jnp.float32) * valid[:, None]
        roles = role_matrix(kind, colour, shown, row, col, border) * valid[:, None]
        stats = {
            "n_fires": jnp.sum(z > 0, axis=0, dtype=jnp.int32),
            "mass": jnp.sum(z, axis=0),
            "max": jnp.max(z, axis=0),
            "role_mass": jnp.einsum("nf,nr->fr", z, roles),
            "role_tokens": jnp.sum(roles, axis=0),
        }
    return z, stats


@partial(jax.jit, static_argnums=1)
def firing_pairs(z, size: int):
    """(latent, token, value) of every firing entry, sorted by token then latent, padded to
    `size`; and the true count (when it exceeds `size`, call again with a larger one)."""
    fired = z > 0
    token, latent = jnp.nonzero(fired, size=size, fill_value=0)
    return latent.astype(jnp.int32), token.astype(jnp.int32), z[token, latent], jnp.sum(fired, dtype=jnp.int32)
