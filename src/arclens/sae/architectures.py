"""The four training architectures: forward pass and loss on one batch, as pure JAX functions.

Parameters live in a training layout, ``W_enc [d_sae, d_in]`` (one row per latent, so the rows a
token selects are a contiguous gather), ``b_enc [d_sae]``, ``W_dec [d_sae, d_out]``,
``b_dec [d_out]`` and, for JumpReLU, ``threshold [d_sae]``; export.py turns them into SAELens's
layout. Inputs are already scaled (recipe: E||x||^2 = d).

TopK and BatchTopK are computed sparsely. The dense pre-activations ``x W_enc^T`` are used only to
*select* latents (no gradient flows through them); the selected latents' values are recomputed
from gathered encoder rows, and the reconstruction sums gathered decoder rows. Autodiff then
gives scatter-add gradients that touch only the selected rows: per token O(k d) work instead of
O(d_sae d), which is where the speed over a dense implementation comes from. The values are the
same function as the dense one (up to float summation order).

JumpReLU (Rajamanoharan et al. 2024) uses straight-through estimators with a rectangle kernel
for the threshold's gradient (``jumprelu``/``step`` below, as in the paper's pseudo-code) and an L0
penalty; ReLU uses the L1 penalty weighted by decoder norms (Anthropic, April 2024 update).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Params:
    W_enc: jax.Array  # [d_sae, d_in]
    b_enc: jax.Array  # [d_sae]
    W_dec: jax.Array  # [d_sae, d_out]
    b_dec: jax.Array  # [d_out]
    threshold: jax.Array | None = None  # [d_sae], jumprelu only


@dataclass(frozen=True)
class ArchConfig:
    """Static (hashable) description of one SAE's training computation."""

    arch: str
    d_in: int
    d_out: int
    d_sae: int
    k: int | None
    aux_k: int
    aux_coef: float
    apply_b_dec_to_input: bool
    decoder_norm: str  # "unit" | "free"
    bandwidth: float
    candidates: int  # batchtopk: per-token candidates (m >= k)
    aux_pool: int | None = None  # AuxK: the most dead latents computed exactly in one step


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Forward:
    """What one batch's forward pass produced (all device arrays)."""

    loss: jax.Array
    recon: jax.Array  # sum over tokens of ||y - y_hat||^2
    aux_loss: jax.Array
    sparsity_loss: jax.Array
    l0: jax.Array  # mean active latents per token
    fires: jax.Array  # [d_sae] float: tokens of the batch on which each latent fired
    min_kept: jax.Array  # batchtopk: smallest kept activation (else 0)
    overflow: jax.Array  # batchtopk: share of tokens whose every candidate was kept
    residual: jax.Array | None = None  # topk, batchtopk: y - y_hat (no gradient), AuxK's target


# ---------------------------------------------------------------------------------------------
# straight-through estimators (JumpReLU)


def _rectangle(u):
    return ((u > -0.5) & (u < 0.5)).astype(u.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def jumprelu(pre, threshold, bandwidth):
    return pre * (pre > threshold).astype(pre.dtype)


def _jumprelu_fwd(pre, threshold, bandwidth):
    return jumprelu(pre, threshold, bandwidth), (pre, threshold)


def _jumprelu_bwd(bandwidth, res, g):
    pre, threshold = res
    gate = (pre > threshold).astype(pre.dtype)
    kernel = _rectangle((pre - threshold) / bandwidth) / bandwidth
    grad_threshold = -jnp.sum(g * threshold * kernel, axis=tuple(range(pre.ndim - 1)))
    return g * gate, grad_threshold


jumprelu.defvjp(_jumprelu_fwd, _jumprelu_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def step(pre, threshold, bandwidth):
    return (pre > threshold).astype(pre.dtype)


def _step_fwd(pre, threshold, bandwidth):
    return step(pre, threshold, bandwidth), (pre, threshold)


def _step_bwd(bandwidth, res, g):
    pre, threshold = res
    kernel = _rectangle((pre - threshold) / bandwidth) / bandwidth
    return jnp.zeros_like(pre), -jnp.sum(g * kernel, axis=tuple(range(pre.ndim - 1)))


step.defvjp(_step_fwd, _step_bwd)


# ---------------------------------------------------------------------------------------------
# shared pieces


def _sse(y, y_hat):
    return jnp.sum(jnp.square(y - y_hat))


def _centred_sse(y):
    return jnp.sum(jnp.square(y - jnp.mean(y, axis=0)))


def encoder_input(p: Params, cfg: ArchConfig, x):
    return x - p.b_dec if cfg.apply_b_dec_to_input else x


def _gathered_pre(p: Params, xc, idx):
    """``pre[b, j] = xc[b] . W_enc[idx[b, j]] + b_enc[idx[b, j]]``: differentiable, sparse grads."""
    return jnp.einsum("bd,bjd->bj", xc, p.W_enc[idx]) + p.b_enc[idx]


def _gathered_decode(p: Params, vals, idx):
    return jnp.einsum("bj,bjd->bd", vals, p.W_dec[idx])


def kth_largest(x, k: int):
    """The ``k``-th largest value of each row of ``x [..., n]`` (float32, -inf allowed), exactly:
    a binary search over the 32 bits of an order-preserving integer key, one vectorised count
    per bit. On CPU it is ~10x faster than ``lax.top_k`` for k in the tens (XLA's TopK scans each
    row serially); AuxK needs only this threshold, not the indices."""
    u = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    key = jnp.where((u >> 31) == 1, ~u, u | jnp.uint32(0x80000000))  # float order == unsigned order
    t = jnp.zeros(x.shape[:-1], jnp.uint32)
    for bit in range(31, -1, -1):
        cand = t | jnp.uint32(1 << bit)
        t = jnp.where(jnp.sum(key >= cand[..., None], -1) >= k, cand, t)
    back = jnp.where((t >> 31) == 1, t & jnp.uint32(0x7FFFFFFF), ~t)
    return jax.lax.bitcast_convert_type(back, jnp.float32)


def _fires(idx, active, d_sae):
    return jnp.zeros((d_sae,), jnp.float32).at[idx.reshape(-1)].add(active.reshape(-1).astype(jnp.float32))


def _compact(mask, size: int, start=0):
    """The indices where ``mask`` is True, in index order from the ``start``-th of them on
    (wrapping around), in an array of ``size`` (padded with 0)."""
    n = jnp.maximum(jnp.sum(mask), 1)
    rank = (jnp.cumsum(mask) - 1 - start) % n
    slot = jnp.where(mask & (rank < size), rank, size)
    return jnp.zeros((size,), jnp.int32).at[slot].set(jnp.arange(mask.shape[0], dtype=jnp.int32), mode="drop")


def aux_capacities(aux_k: int, d_sae: int, max_pool: int | None = None) -> tuple[int, ...]:
    """Sizes of the dead-latent pools AuxK is compiled for: aux_k * 2^j up to ``max_pool``
    (default 4 aux_k), never more than d_sae."""
    top = min(d_sae, max_pool or 4 * aux_k)
    caps, c = [], aux_k
    while c < top:
        caps.append(c)
        c *= 2
    return (*caps, top)


def auxk(p: Params, cfg: ArchConfig, x, residual, dead, step=0):
    """AuxK (Gao et al. 2024) and its gradient: ``(loss, grads like p)``.

    Each token's ``aux_k`` largest dead latents reconstruct the main reconstruction's
    ``residual`` (no b_dec); normalised MSE, times ``aux_coef``, scaled down when fewer than
    ``aux_k`` latents are dead (as sparsify and SAELens do); 0 when none is.

    Only the dead latents are computed: they are gathered into the smallest pool of
    ``aux_capacities`` that holds them all, one compiled branch per pool size, picked on the
    device. When more latents are dead than the largest pool holds (``aux_pool``, default
    4 aux_k), each step takes a different window of ``aux_pool`` of them (from the
    ``step * aux_pool``-th dead latent on, wrapping), so all are tried in turn: exact AuxK up to
    ``aux_pool`` dead latents, a rotating subset beyond. (A pool as wide as d_sae would cost every
    step on CPU, dead latents or not, for its [B, d_sae] temporaries.) The gradient is taken
    *inside* each branch: through the switch, its forward would return every branch's residuals
    (zeros for those not taken) on every step."""
    n_dead = jnp.sum(dead)
    caps = aux_capacities(cfg.aux_k, cfg.d_sae, cfg.aux_pool)
    start = (step * caps[-1]) % jnp.maximum(n_dead, 1)
    scale = cfg.aux_coef * jnp.minimum(n_dead / cfg.aux_k, 1.0)

    def pool(size: int):
        def loss(p):
            xc = encoder_input(p, cfg, x)
            cols = _compact(dead, size, start)
            live = jnp.arange(size) < n_dead
            pre = xc @ p.W_enc[cols].T + p.b_enc[cols]
            pre = jnp.where(live[None, :], pre, -jnp.inf)
            if size > cfg.aux_k:
                keep = pre >= kth_largest(jax.lax.stop_gradient(pre), cfg.aux_k)[:, None]
            else:
                keep = jnp.broadcast_to(live[None, :], pre.shape)
            acts = jnp.where(keep, jax.nn.relu(pre), 0.0)
            e_hat = acts @ p.W_dec[cols]
            return scale * _sse(residual, e_hat) / jnp.maximum(_centred_sse(residual), 1e-12)

        return lambda p: jax.value_and_grad(loss)(p)

    def none(p):
        return jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, p)

    index = jnp.where(n_dead > 0, 1 + jnp.sum(n_dead > jnp.asarray(caps[:-1])), 0)
    return jax.lax.switch(index, [none] + [pool(c) for c in caps], p)


# ---------------------------------------------------------------------------------------------
# the architectures


def forward(p: Params, cfg: ArchConfig, x, y, sparsity_coef) -> Forward:
    """One batch: ``x [B, d_in]`` in, target ``y [B, d_out]`` (``x`` itself for an SAE),
    ``sparsity_coef`` the current L0/L1 coefficient (traced). TopK and BatchTopK's AuxK term is
    ``auxk``, with its own gradient, added by the step."""
    if cfg.arch == "topk":
        return _topk(p, cfg, x, y)
    if cfg.arch == "batchtopk":
        return _batchtopk(p, cfg, x, y)
    if cfg.arch == "jumprelu":
        return _jumprelu(p, cfg, x, y, sparsity_coef)
    if cfg.arch == "relu":
        return _relu(p, cfg, x, y, sparsity_coef)
    raise ValueError(f"unknown architecture {cfg.arch!r}")


def _topk(p, cfg, x, y) -> Forward:
    xc = encoder_input(p, cfg, x)
    pre_sel = jax.lax.stop_gradient(xc @ p.W_enc.T + p.b_enc)
    _, idx = jax.lax.top_k(pre_sel, cfg.k)
    vals = jax.nn.relu(_gathered_pre(p, xc, idx))
    y_hat = _gathered_decode(p, vals, idx) + p.b_dec
    recon = _sse(y, y_hat)
    main = recon / jnp.maximum(_centred_sse(y), 1e-12)
    active = vals > 0
    return Forward(loss=main, recon=recon, aux_loss=jnp.zeros(()), sparsity_loss=jnp.zeros(()),
                   l0=jnp.mean(jnp.sum(active, -1)), fires=_fires(idx, active, cfg.d_sae),
                   min_kept=jnp.zeros(()), overflow=jnp.zeros(()), residual=jax.lax.stop_gradient(y - y_hat))


def _batchtopk(p, cfg, x, y) -> Forward:
    """BatchTopK (Bussmann et al. 2024): the ``k * B`` largest activations of the whole batch.
    Each token's ``candidates`` largest pre-activations are the pool; a token with more than
    that many of the batch's top activations keeps its ``candidates`` (``overflow`` reports how
    often every candidate of a token was kept, i.e. the pool may have been too small)."""
    xc = encoder_input(p, cfg, x)
    B = x.shape[0]
    pre_sel = jax.lax.stop_gradient(xc @ p.W_enc.T + p.b_enc)
    cand, idx = jax.lax.top_k(pre_sel, cfg.candidates)
    cand = jax.nn.relu(cand)
    n_keep = min(cfg.k * B, cand.size)
    kth = kth_largest(cand.reshape(-1), n_keep)
    keep = (cand >= kth) & (cand > 0)
    vals = jax.nn.relu(_gathered_pre(p, xc, idx)) * keep
    y_hat = _gathered_decode(p, vals, idx) + p.b_dec
    recon = _sse(y, y_hat)
    main = recon / jnp.maximum(_centred_sse(y), 1e-12)
    active = vals > 0
    min_kept = jnp.min(jnp.where(active, jax.lax.stop_gradient(vals), jnp.inf))
    return Forward(loss=main, recon=recon, aux_loss=jnp.zeros(()), sparsity_loss=jnp.zeros(()),
                   residual=jax.lax.stop_gradient(y - y_hat),
                   l0=jnp.mean(jnp.sum(active, -1)), fires=_fires(idx, active, cfg.d_sae),
                   min_kept=jnp.where(jnp.isfinite(min_kept), min_kept, 0.0),
                   overflow=jnp.mean(keep[:, -1]) if cfg.candidates < cfg.d_sae else jnp.zeros(()))


def _jumprelu(p, cfg, x, y, coef) -> Forward:
    xc = encoder_input(p, cfg, x)
    pre = xc @ p.W_enc.T + p.b_enc
    z = jumprelu(pre, p.threshold, cfg.bandwidth)
    y_hat = z @ p.W_dec + p.b_dec
    recon = _sse(y, y_hat)
    B = x.shape[0]
    l0_per_token = jnp.sum(step(pre, p.threshold, cfg.bandwidth), axis=-1)
    sparsity = coef * jnp.mean(l0_per_token)
    active = jax.lax.stop_gradient(pre > p.threshold)
    return Forward(loss=recon / B + sparsity, recon=recon, aux_loss=jnp.zeros(()), sparsity_loss=sparsity,
                   l0=jnp.mean(jnp.sum(active, -1)), fires=jnp.sum(active, 0).astype(jnp.float32),
                   min_kept=jnp.zeros(()), overflow=jnp.zeros(()))


def _relu(p, cfg, x, y, coef) -> Forward:
    xc = encoder_input(p, cfg, x)
    z = jax.nn.relu(xc @ p.W_enc.T + p.b_enc)
    y_hat = z @ p.W_dec + p.b_dec
    recon = _sse(y, y_hat)
    B = x.shape[0]
    sparsity = coef * jnp.mean(z @ jnp.linalg.norm(p.W_dec, axis=-1))
    active = jax.lax.stop_gradient(z > 0)
    return Forward(loss=recon / B + sparsity, recon=recon, aux_loss=jnp.zeros(()), sparsity_loss=sparsity,
                   l0=jnp.mean(jnp.sum(active, -1)), fires=jnp.sum(active, 0).astype(jnp.float32),
                   min_kept=jnp.zeros(()), overflow=jnp.zeros(()))
