"""What runs on the device for each batch: the SAE encode, the per-latent reductions, and the
firing (latent, token) pairs as a sparse list.

A TopK SAE's codes are sparse by construction: ``lax.top_k`` gives each token's ``k`` latents and
values, and those ARE the firing pairs. `topk_batch_stats` keeps them as ``[N, k]`` and reduces
them with scatter-adds (``N x k`` entries, ``N x k x 8`` for the roles), so the dense ``[N, F]``
codes are never built, scanned or searched for nonzeros (on XLA's CPU backend that was about
two thirds of the step: the scatter into ``[N, F]``, three column reductions over it, the role
matmul and the host's nonzero). Other architectures are dense by nature and go through
`batch_stats`.

The mass by role is one matmul: the activations ``z [N, F]`` against a one-hot matrix of the
tokens' roles ``[N, R]`` (features/layout.py), so adding a role costs a column, not a pass. (The
firing counts by role and activation interval, for coverage, come from the sparse pairs on the
host: they are ``nnz x 8`` additions, against ``N x F x R x Q`` on the device.) What leaves the
device each batch is ``[F]`` or the sparse pairs (the ``[F, R]`` role masses are carried here,
`add_compensated`, and leave once); ``z`` itself never does. Matmuls run at full float32 precision
(GPUs would otherwise use TF32 and move firing decisions near zero).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from arclens.features.layout import BLOCKS, GRID_KINDS, MAX_SIDE, N_COLOURS, N_ROLE_COLUMNS
from arclens.sae import SAE, encode
from arclens.sae.model import pre_activations

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


def topk_codes(sae: SAE, x):
    """A TopK SAE's codes as ``(latent [N, k] int32, value [N, k])``: the very selection of
    `arclens.sae.encode` (``lax.top_k`` of the same pre-activations, ReLU'd; ties to the lower
    index), before it is scattered into a dense ``[N, F]``."""
    values, latents = jax.lax.top_k(pre_activations(sae, x), sae.cfg.k)
    return latents.astype(jnp.int32), jax.nn.relu(values)


@jax.jit
def topk_batch_stats(sae: SAE, x, valid, role_cols):
    """`batch_stats` for a TopK SAE, from its ``[N, k]`` codes. ``role_cols`` int16 ``[N, 8]``:
    each token's role columns (layout.role_columns, -1 for none). Returns ((latent, value), stats)
    with ``value`` 0 where the latent does not fire or the slot is padding."""
    with jax.default_matmul_precision("float32"):
        latent, value = topk_codes(sae, x)
    value = value.astype(jnp.float32) * valid[:, None]
    f, r = sae.cfg.d_sae, N_ROLE_COLUMNS
    cols = jnp.where(role_cols >= 0, role_cols.astype(jnp.int32), r)  # column r: "no role", dropped below
    per_role = (latent[:, :, None] * (r + 1) + cols[:, None, :]).reshape(-1)
    spread = jnp.broadcast_to(value[:, :, None], (*value.shape, cols.shape[1])).reshape(-1)
    stats = {
        "n_fires": jnp.zeros(f, jnp.int32).at[latent].add((value > 0).astype(jnp.int32)),
        "mass": jnp.zeros(f, jnp.float32).at[latent].add(value),
        "max": jnp.zeros(f, jnp.float32).at[latent].max(value),
        "role_mass": jnp.zeros(f * (r + 1), jnp.float32).at[per_role].add(spread).reshape(f, r + 1)[:, :r],
        "role_tokens": jnp.zeros(r + 1, jnp.float32).at[cols.reshape(-1)].add(
            jnp.repeat(valid, cols.shape[1]))[:r],
    }
    return (latent, value), stats


def encode_batch(sae: SAE, batch):
    """One batch (features/batch.py) through the SAE on the device: (codes, stats), where codes
    is ``z [N, F]`` for a dense SAE or ``(latent, value) [N, k]`` for a TopK one
    (Accumulator.pairs takes either)."""
    x, valid = jnp.asarray(batch.x), jnp.asarray(batch.valid)
    if sae.cfg.architecture == "topk":
        return topk_batch_stats(sae, x, valid, jnp.asarray(batch.role_cols))
    return batch_stats(sae, x, valid, *(jnp.asarray(batch.roles[name]) for name in ROLE_FIELDS))


@partial(jax.jit, static_argnums=1)
def firing_pairs(z, size: int):
    """(latent, token, value) of every firing entry, sorted by token then latent, padded to
    `size`; and the true count (when it exceeds `size`, call again with a larger one)."""
    fired = z > 0
    token, latent = jnp.nonzero(fired, size=size, fill_value=0)
    return latent.astype(jnp.int32), token.astype(jnp.int32), z[token, latent], jnp.sum(fired, dtype=jnp.int32)


def _group(latent, token, value, interval, count, part_of, starts, n_parts: int):
    # A counting sort: a pair's place is where its part starts plus how many of that part's pairs
    # come before it (a running count over the one-hot of the parts, [P, n_parts + 1]). With a
    # handful of keys that is a few passes over the pairs, where XLA's general sort (on the CPU
    # backend ~15x slower) would compare them log P times.
    firing = (value > 0) & (jnp.arange(value.shape[0]) < count)
    part = jnp.where(firing, part_of[latent], n_parts)  # (n_parts: the slots that do not fire, last)
    one_hot = (part[:, None] == jnp.arange(n_parts + 1)[None, :]).astype(jnp.int32)
    counts = jnp.sum(one_hot, axis=0)
    before = jnp.sum(jnp.cumsum(one_hot, axis=0) * one_hot, axis=1) - 1  # same-part pairs before this one
    place = (jnp.cumsum(counts) - counts)[part] + before

    def placed(a):
        return jnp.zeros_like(a).at[place].set(a, unique_indices=True)

    latent = latent - starts[jnp.minimum(part, n_parts - 1)]
    grouped = tuple(placed(a) for a in (latent, token.astype(jnp.int32), value))
    return (*grouped, None if interval is None else placed(interval.astype(jnp.int32))), counts


@partial(jax.jit, static_argnames="n_parts")
def group_pairs(latent, token, value, interval, count, part_of, starts, *, n_parts: int):
    """The first ``count`` of the flat pairs ``latent, token, value [P]`` (and their intervals
    ``[P]``, or None), those that fire, grouped by part (``part_of [F]``: latent -> part; its
    range starts at ``starts [n_parts]``): the parts one after another, each in the pairs' order,
    latents numbered from their range's start. Returns ((latent, token, value, interval) [P],
    counts [n_parts + 1]); the last count is of the slots that do not fire, placed after the
    parts (features/pairs.py `OnDevice` brings it to the host)."""
    return _group(latent, token, value, interval, count, part_of, starts, n_parts)


@partial(jax.jit, static_argnames="n_parts")
def group_topk(latent, value, interval, part_of, starts, *, n_parts: int):
    """`group_pairs` of TopK codes ``(latent, value) [N, k]`` (and intervals ``[N, k]`` or None),
    whose slots in token order are the flat ``[N * k]``."""
    n, k = value.shape
    token = jnp.arange(n * k, dtype=jnp.int32) // k
    flat = None if interval is None else interval.reshape(-1)
    return _group(latent.reshape(-1), token, value.reshape(-1), flat, n * k, part_of, starts, n_parts)


@partial(jax.jit, donate_argnums=0)
def add_compensated(carry, x):
    """``carry + x`` for float32 ``carry = (sum, compensation)``, Neumaier's compensated sum: the
    rounding error of every addition is kept in the compensation, so ``sum + compensation``
    (added in float64 on the host) is within a few float32 roundings of the exact total after any
    number of batches, where a plain float32 sum would drift by one rounding a batch. The role
    masses of the pass are carried so on the device: ``[F, R]`` a batch (8 MB at 16k latents) need
    not come to the host, and XLA never reassociates float additions, so the compensation stays."""
    total, compensation = carry
    t = total + x
    error = jnp.where(jnp.abs(total) >= jnp.abs(x), (total - t) + x, (x - t) + total)
    return t, compensation + error
