"""Attention kernels: an XLA reference on every backend, cuDNN's fused kernel on GPU.

Layouts are BTNH throughout: q ``[B, T, Hq, hd]``, k/v ``[B, S, Hkv, hd]``. Grouped-query
attention follows transformers' ``repeat_kv``: query head ``h`` reads KV head ``h // (Hq/Hkv)``.

Which keys a query sees is given by positions and lengths, not by a mask array, so one
description serves the prefill (``q_positions = arange(T)``, keys = the prompt) and a decode step
against a longer cache (``q_positions = [pos]``, keys = the cache, ``kv_lengths = pos + 1``):
key ``s`` is visible to query ``(b, t)`` iff ``s <= q_positions[b, t]`` and ``s < kv_lengths[b]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

ATTN_IMPLS = ("auto", "xla", "cudnn")
_FUSED_DTYPES = (jnp.bfloat16, jnp.float16)


def resolve_impl(attn_impl: str, dtype, head_dim: int | None = None) -> str:
    """``auto`` -> ``cudnn`` on a GPU backend with a bf16/fp16 compute dtype (and a head_dim
    cuDNN takes: a multiple of 8, at most 256), else ``xla``."""
    if attn_impl not in ATTN_IMPLS:
        raise ValueError(f"attn_impl={attn_impl!r}; expected one of {ATTN_IMPLS}")
    if attn_impl != "auto":
        return attn_impl
    fits = head_dim is None or (head_dim % 8 == 0 and head_dim <= 256)
    if jax.default_backend() == "gpu" and fits and jnp.dtype(dtype) in [jnp.dtype(d) for d in _FUSED_DTYPES]:
        return "cudnn"
    return "xla"


def visible(q_positions: jax.Array, kv_lengths: jax.Array, kv_len: int) -> jax.Array:
    """Boolean ``[B, T, S]``: causal and inside each sequence's length (right padding)."""
    s = jnp.arange(kv_len, dtype=jnp.int32)
    causal = s[None, None, :] <= q_positions[:, :, None]
    inside = s[None, None, :] < kv_lengths[:, None, None]
    return causal & inside


def attend_xla(q, k, v, q_positions, kv_lengths) -> jax.Array:
    """Reference attention; returns ``[B, T, Hq, hd]`` in q's dtype.

    Scores and softmax are computed in float32 whatever the compute dtype (as fused kernels do,
    and as transformers' eager path does for the softmax); masked scores get the most negative
    finite float32, so a row with nothing visible gives finite numbers, never NaN.

    Each KV head's group of query heads is folded into the query axis, so both products are
    plain batched matmuls over (batch, KV head) with M = group * T: no repeated K/V and no
    transposed 5-D score tensor. On XLA:CPU that is 2.3x faster than the 5-D einsum it replaced
    (706 -> 308 ms at B=16, T=1024, 4/2 heads, hd 16), with the same numbers.
    """
    b, t, hq, hd = q.shape
    hkv = k.shape[2]
    g = hq // hkv
    q_folded = q.reshape(b, t, hkv, g, hd).transpose(0, 2, 3, 1, 4).reshape(b, hkv, g * t, hd)
    scores = jnp.einsum("bkqh,bskh->bkqs", q_folded, k, preferred_element_type=jnp.float32)
    scores = scores * jnp.float32(hd**-0.5)
    mask = visible(q_positions, kv_lengths, k.shape[1])  # [B, T, S]
    mask = jnp.tile(mask, (1, g, 1))[:, None]  # [B, 1, G*T, S]: folded rows are (group, t)
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkqs,bskh->bkqh", probs, v, preferred_element_type=jnp.float32)
    return out.reshape(b, hkv, g, t, hd).transpose(0, 3, 1, 2, 4).reshape(b, t, hq, hd).astype(q.dtype)


def attend_cudnn(q, k, v, q_lengths, kv_lengths, *, causal: bool, implementation: str = "cudnn") -> jax.Array:
    """cuDNN fused attention (GPU, bf16/fp16, hd a multiple of 8 and <= 256).

    ``causal=True`` is cuDNN's top-left-aligned causal mask: right for a prefill where queries
    and keys are the same positions, WRONG for a decode step against a longer cache (use
    ``causal=False`` with ``kv_lengths = pos + 1`` for a single query there). Rows past
    ``q_lengths`` are zeroed, so padding never carries anything (e.g. a NaN) into later layers.
    ``implementation="xla"`` runs JAX's reference of the very same call (how CPU tests check the
    arguments' meaning).
    """
    out = jax.nn.dot_product_attention(
        q, k, v,
        scale=q.shape[-1] ** -0.5,
        is_causal=causal,
        query_seq_lengths=q_lengths.astype(jnp.int32),
        key_value_seq_lengths=kv_lengths.astype(jnp.int32),
        implementation=implementation,
    )
    real = jnp.arange(q.shape[1], dtype=jnp.int32)[None, :] < q_lengths[:, None]
    return jnp.where(real[:, :, None, None], out, jnp.zeros((), out.dtype))


# Prefill queries are processed in blocks of this many positions on the XLA path: the scores of
# a block are [B, Hq, block, keys up to the block's end] instead of [B, Hq, T, T], so a 9k-token
# ARC prompt needs ~1/9 of the memory and half the FLOPs (keys past a block are all masked).
XLA_Q_BLOCK = 1024


def self_attention(q, k, v, lengths, *, impl: str, q_block: int = XLA_Q_BLOCK) -> jax.Array:
    """Prefill attention of a right-padded batch onto itself: queries and keys are positions
    ``0..T-1``, sequence ``b`` is real up to ``lengths[b]``."""
    if impl == "cudnn":
        return attend_cudnn(q, k, v, lengths, lengths, causal=True)
    if impl != "xla":
        raise ValueError(f"attention impl {impl!r}; expected 'xla' or 'cudnn' (resolve 'auto' first)")
    b, t = q.shape[:2]
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    if t <= q_block:
        return attend_xla(q, k, v, positions, lengths)
    blocks = []
    for start in range(0, t, q_block):
        end = min(start + q_block, t)  # causal: keys past `end` are invisible to this block
        blocks.append(attend_xla(q[:, start:end], k[:, :end], v[:, :end], positions[:, start:end], lengths))
    return jnp.concatenate(blocks, axis=1)
