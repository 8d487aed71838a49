"""Our forward pass against transformers' Qwen2ForCausalLM, float32 on CPU.

Pass condition (issue 4): ||jax - hf|| / ||hf|| <= 1e-4 for every tensor: every hook kind at the
first, a middle and the last layer, and the logits, on prompts of at least 300 tokens.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from tests.support.reference import hf_captures, load_hf, rel_err, write_hf_checkpoint

from arclens.model.config import QwenConfig
from arclens.model.hooks import HOOK_KINDS, Hook
from arclens.model.loading import load_params
from arclens.model.qwen import forward_jit

TOL = 1e-4
VOCAB = 512

# (id, seed, hidden, layers, heads, kv_heads, head_dim or None (derived), tied)
SHAPES = [
    ("gqa1-hd16-tied", 11, 64, 3, 4, 4, None, True),
    ("gqa2-hd40-untied", 12, 96, 4, 4, 2, 40, False),  # explicit head_dim != hidden / heads
    ("gqa4-hd16-untied", 13, 128, 3, 8, 2, None, False),
    ("gqa2-hd64-tied", 14, 128, 3, 2, 1, None, True),
]


def _layers(n):
    return sorted({0, n // 2, n - 1})


@pytest.fixture(scope="module", params=SHAPES, ids=[s[0] for s in SHAPES])
def case(request, tmp_path_factory):
    _, seed, hidden, layers, heads, kv, hd, tied = request.param
    d = write_hf_checkpoint(tmp_path_factory.mktemp(request.param[0]), seed=seed, hidden=hidden, layers=layers,
                            heads=heads, kv_heads=kv, inter=2 * hidden + 32, vocab=VOCAB, tied=tied, head_dim=hd)
    return d, load_hf(d)


def test_config_matches_transformers(case):
    d, hf = case
    cfg = QwenConfig.from_pretrained(d)
    c = hf.config
    assert cfg.head_dim == hf.model.layers[0].self_attn.head_dim
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.num_hidden_layers) == (
        c.num_attention_heads, c.num_key_value_heads, c.num_hidden_layers)
    assert cfg.tie_word_embeddings == c.tie_word_embeddings
    assert cfg.rope_theta == c.rope_parameters["rope_theta"]


def test_every_hook_logits_and_kv_match_transformers(case):
    """One right-padded batch (the longest row unpadded), compared on real tokens only: every hook
    kind at the first, a middle and the last layer, the logits, and the k (after RoPE) and v that
    transformers keeps in its cache (what ``return_kv`` hands to generation)."""
    d, hf = case
    import torch

    cfg = QwenConfig.from_pretrained(d)
    params = load_params(d, cfg, jnp.float32)
    layers = _layers(cfg.n_layers)
    hooks = tuple(Hook(i, k) for i in layers for k in HOOK_KINDS)
    lengths = np.array([347, 310, 302], np.int32)
    rng = np.random.default_rng(cfg.hidden_size)
    mask = (np.arange(347)[None] < lengths[:, None]).astype(np.int64)
    tokens = np.where(mask > 0, rng.integers(0, VOCAB, size=(3, 347)), 0).astype(np.int32)

    ours = forward_jit(params, cfg, jnp.asarray(tokens), jnp.asarray(lengths), hooks=hooks, logits=True,
                       return_kv=True)
    ref = hf_captures(hf, tokens, layers, attention_mask=mask)
    assert set(ref) == {h.name for h in hooks} | {"logits"}
    errs = {}
    for name in ref:
        for b, n in enumerate(lengths):
            errs[name, b] = rel_err(np.asarray(ours[name])[b, :n], ref[name][b, :n])
    bad = {k: e for k, e in errs.items() if not e <= TOL}
    assert not bad, f"relative errors above {TOL}: {bad}"
    # The random weights make a real difference between layers (a no-op layer would pass trivially).
    last = layers[-1]
    assert rel_err(ref[f"blocks.{last}.hook_resid_post"], ref[f"blocks.{last}.hook_resid_pre"]) > 0.1

    assert len(ours["kv"]) == cfg.n_layers
    with torch.no_grad():
        cache = hf(input_ids=torch.as_tensor(tokens, dtype=torch.long), attention_mask=torch.as_tensor(mask),
                   use_cache=True).past_key_values
    for i in layers:
        k, v = (np.asarray(a) for a in ours["kv"][i])
        assert k.shape == (3, 347, cfg.n_kv_heads, cfg.head_dim) and v.shape == k.shape
        k_ref = cache.layers[i].keys.numpy().transpose(0, 2, 1, 3)  # [B, Hkv, T, hd] -> BTNH
        v_ref = cache.layers[i].values.numpy().transpose(0, 2, 1, 3)
        for b, n in enumerate(lengths):
            assert rel_err(k[b, :n], k_ref[b, :n]) <= TOL and rel_err(v[b, :n], v_ref[b, :n]) <= TOL, (i, b)
