"""A prompt's captures do not depend on what else is in its batch, nor on where it sits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tests.support.reference import rel_err

from arclens.errors import UserError
from arclens.model.config import QwenConfig
from arclens.model.hooks import HOOK_KINDS, Hook
from arclens.model.loading import load_params
from arclens.model.qwen import forward, forward_jit


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    cfg = QwenConfig.from_pretrained(tiny_model_dir)
    return cfg, load_params(tiny_model_dir, cfg, jnp.float32)


def _pad(rows, t):
    out = np.zeros((len(rows), t), np.int32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return jnp.asarray(out), jnp.asarray([len(r) for r in rows], jnp.int32)


def test_same_captures_alone_padded_and_at_another_position(model):
    cfg, params = model
    rng = np.random.default_rng(0)
    prompt, longer, shorter = (rng.integers(0, cfg.vocab_size, n, dtype=np.int32) for n in (211, 340, 97))
    hooks = tuple(Hook(i, k) for i in (0, cfg.n_layers - 1) for k in HOOK_KINDS)

    def run(rows, t):
        tokens, lengths = _pad(rows, t)
        return forward_jit(params, cfg, tokens, lengths, hooks=hooks, logits=True)

    alone = run([prompt], len(prompt))
    batches = {
        "middle of a padded batch": (run([longer, prompt, shorter], 340), 1),
        "first row, padded": (run([prompt, shorter, longer], 340), 0),
        "last row, longer padding": (run([shorter, longer, prompt], 384), 2),
    }
    n = len(prompt)
    for where, (out, row) in batches.items():
        for name, ref in alone.items():
            e = rel_err(np.asarray(out[name])[row, :n], np.asarray(ref)[0])
            assert e <= 1e-5, (where, name, e)
    # and the other rows are different prompts: the comparison is not vacuous
    out, _ = batches["middle of a padded batch"]
    assert rel_err(np.asarray(out["logits"])[0, :n], np.asarray(alone["logits"])[0]) > 0.1


def test_padding_content_does_not_leak(model):
    """Whatever sits in the padded slots (here: different token ids), real tokens are unchanged."""
    cfg, params = model
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, cfg.vocab_size, (2, 64), dtype=np.int32)
    lengths = jnp.array([40, 64], jnp.int32)
    other = tokens.copy()
    other[0, 40:] = rng.integers(0, cfg.vocab_size, 24)
    hooks = (Hook(cfg.n_layers - 1, "resid_post"),)
    a = forward_jit(params, cfg, jnp.asarray(tokens), lengths, hooks=hooks)
    b = forward_jit(params, cfg, jnp.asarray(other), lengths, hooks=hooks)
    name = hooks[0].name
    np.testing.assert_array_equal(np.asarray(a[name])[0, :40], np.asarray(b[name])[0, :40])
    np.testing.assert_array_equal(np.asarray(a[name])[1], np.asarray(b[name])[1])
    # ids no embedding row has (-1, vocab_size) are harmless padding too, and give finite values
    for pad in (-1, cfg.vocab_size):
        other[0, 40:] = pad
        c = forward_jit(params, cfg, jnp.asarray(other), lengths, hooks=hooks)
        np.testing.assert_array_equal(np.asarray(a[name])[0, :40], np.asarray(c[name])[0, :40])
        assert np.isfinite(np.asarray(c[name])).all()


def _dots(cfg, params, **kw):
    tokens = jnp.zeros((1, 8), jnp.int32)
    jaxpr = jax.make_jaxpr(lambda p, t: forward(p, cfg, t, None, **kw))(params, tokens)
    return str(jaxpr).count("dot_general")


def test_stops_after_the_deepest_requested_layer(model):
    cfg, params = model
    per_layer = _dots(cfg, params, hooks=(Hook(1, "resid_post"),)) - _dots(cfg, params, hooks=(Hook(0, "resid_post"),))
    assert per_layer > 0
    assert _dots(cfg, params, hooks=(Hook(0, "attn_out"),)) == per_layer
    assert _dots(cfg, params, hooks=(Hook(cfg.n_layers - 1, "resid_pre"),)) == cfg.n_layers * per_layer
    assert _dots(cfg, params, hooks=()) == 0
    # logits need every layer plus the head
    assert _dots(cfg, params, hooks=(Hook(0, "mlp_out"),), logits=True) == cfg.n_layers * per_layer + 1


def test_hook_names_and_bad_hooks(model):
    cfg, params = model
    tokens = jnp.zeros((1, 4), jnp.int32)
    out = forward_jit(params, cfg, tokens, None, hooks=("blocks.1.hook_mlp_out",))
    assert list(out) == ["blocks.1.hook_mlp_out"] and out["blocks.1.hook_mlp_out"].shape == (1, 4, cfg.d_model)
    with pytest.raises(UserError, match="layers 0..3"):
        forward_jit(params, cfg, tokens, None, hooks=(f"blocks.{cfg.n_layers}.hook_mlp_out",))
    with pytest.raises(UserError, match="does not exist"):
        forward_jit(params, cfg, tokens, None, hooks=(Hook(cfg.n_layers, "resid_post"),))


def test_long_prefill_in_query_blocks_matches_transformers(model, tiny_model_dir):
    """Past XLA_Q_BLOCK tokens the XLA path attends in query blocks; still transformers' numbers."""
    from tests.support.reference import hf_captures, load_hf

    from arclens.model.attention import XLA_Q_BLOCK

    cfg, params = model
    t = XLA_Q_BLOCK + 77
    lengths = np.array([t, XLA_Q_BLOCK + 6], np.int32)
    mask = (np.arange(t)[None] < lengths[:, None]).astype(np.int64)
    tokens = np.where(mask > 0, np.random.default_rng(5).integers(0, cfg.vocab_size, (2, t)), 0).astype(np.int32)
    last = cfg.n_layers - 1
    hooks = (Hook(0, "attn_out"), Hook(last, "resid_post"))
    ours = forward_jit(params, cfg, jnp.asarray(tokens), jnp.asarray(lengths), hooks=hooks)
    ref = hf_captures(load_hf(tiny_model_dir), tokens, [0, last], attention_mask=mask, logits=False)
    for h in hooks:
        for b, n in enumerate(lengths):
            assert rel_err(np.asarray(ours[h.name])[b, :n], ref[h.name][b, :n]) <= 1e-4, (h.name, b)
