"""Attention: the XLA reference against a naive loop, and the fused call's arguments against it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arclens.model.attention import attend_cudnn, attend_xla, resolve_impl, self_attention

B, T, HQ, HKV, HD = 3, 12, 6, 2, 8


def _qkv(seed, t=T, s=T):
    r = np.random.default_rng(seed)
    q = r.standard_normal((B, t, HQ, HD)).astype(np.float32) * 2
    k = r.standard_normal((B, s, HKV, HD)).astype(np.float32) * 2
    v = r.standard_normal((B, s, HKV, HD)).astype(np.float32)
    return q, k, v


def _naive(q, k, v, q_positions, kv_lengths):
    """transformers' eager attention, written out: repeat_kv (head h reads kv head h // G)."""
    g = HQ // HKV
    out = np.zeros(q.shape, np.float64)
    for b in range(q.shape[0]):
        for t in range(q.shape[1]):
            for h in range(HQ):
                keys = [s for s in range(k.shape[1]) if s <= q_positions[b, t] and s < kv_lengths[b]]
                sc = np.array([q[b, t, h] @ k[b, s, h // g] for s in keys]) * HD**-0.5
                p = np.exp(sc - sc.max())
                p /= p.sum()
                out[b, t, h] = sum(pi * v[b, s, h // g] for pi, s in zip(p, keys))
    return out


def test_xla_reference_matches_naive_prefill_with_padding():
    q, k, v = _qkv(0)
    lengths = np.array([12, 7, 1])
    pos = np.broadcast_to(np.arange(T), (B, T))
    ours = np.asarray(self_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(lengths), impl="xla"))
    ref = _naive(q, k, v, pos, lengths)
    for b, n in enumerate(lengths):
        np.testing.assert_allclose(ours[b, :n], ref[b, :n], rtol=1e-5, atol=1e-5)
    assert np.isfinite(ours).all()  # padded rows too: no NaN to carry into later layers


def test_query_blocks_give_the_same_numbers():
    """Long prefills go through the XLA path in query blocks (keys cut at each block's end)."""
    q, k, v = (jnp.asarray(x) for x in _qkv(4))
    lengths = jnp.array([12, 7, 1], jnp.int32)
    attn = jax.jit(self_attention, static_argnames=("impl", "q_block"))
    whole = np.asarray(attn(q, k, v, lengths, impl="xla", q_block=T))
    for block in (5, 4):
        blocked = np.asarray(attn(q, k, v, lengths, impl="xla", q_block=block))
        for b, n in enumerate(np.asarray(lengths)):
            np.testing.assert_allclose(blocked[b, :n], whole[b, :n], rtol=1e-6, atol=1e-6)
        assert np.isfinite(blocked).all()


def test_xla_reference_matches_naive_decode_against_a_longer_cache():
    q, k, v = _qkv(1, t=1, s=T)
    pos = np.array([[11], [6], [0]])
    ours = np.asarray(attend_xla(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(pos),
                                 jnp.asarray(pos[:, 0] + 1)))
    np.testing.assert_allclose(ours, _naive(q, k, v, pos, pos[:, 0] + 1), rtol=1e-5, atol=1e-5)


def test_fused_call_means_the_same_as_the_reference():
    """The exact jax.nn.dot_product_attention call the cuDNN path makes, run by JAX's own XLA
    implementation (no GPU here): same numbers as our reference on every real row, for the
    prefill (causal + lengths) and for a decode step (no causal, kv length = pos + 1)."""
    q, k, v = (jnp.asarray(x) for x in _qkv(2))
    lengths = jnp.array([12, 7, 1], jnp.int32)
    fused_call = jax.jit(attend_cudnn, static_argnames=("causal", "implementation"))
    fused = np.asarray(fused_call(q, k, v, lengths, lengths, causal=True, implementation="xla"))
    ref = np.asarray(self_attention(q, k, v, lengths, impl="xla"))
    for b, n in enumerate(np.asarray(lengths)):
        np.testing.assert_allclose(fused[b, :n], ref[b, :n], rtol=1e-5, atol=1e-5)
        assert not fused[b, n:].any()  # padded rows zeroed
    qd = q[:, :1]
    pos = jnp.array([[11], [6], [0]], jnp.int32)
    fused = fused_call(qd, k, v, jnp.ones(3, jnp.int32), pos[:, 0] + 1, causal=False, implementation="xla")
    np.testing.assert_allclose(np.asarray(fused), np.asarray(attend_xla(qd, k, v, pos, pos[:, 0] + 1)),
                               rtol=1e-5, atol=1e-5)


def test_auto_picks_xla_on_cpu_and_validates():
    assert jax.default_backend() == "cpu"
    assert resolve_impl("auto", jnp.bfloat16) == "xla"
    assert resolve_impl("auto", jnp.float32) == "xla"
    assert resolve_impl("cudnn", jnp.bfloat16) == "cudnn"
    with pytest.raises(ValueError, match="attn_impl"):
        resolve_impl("flash", jnp.bfloat16)
