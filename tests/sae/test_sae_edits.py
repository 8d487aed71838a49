"""SAE edits (sae/edits.py): splice with and without the error term, exact ablations, transcoders,
steering along a latent, and the checks of an SAE against a model."""

from __future__ import annotations

import dataclasses
import re

import jax.numpy as jnp
import numpy as np
import pytest
from tests.support.reference import rel_err

from arclens.errors import UserError
from arclens.model import qwen
from arclens.model.loading import load_model
from arclens.model.qwen import forward_jit
from arclens.sae import SAEConfig, decode, encode, new_sae
from arclens.sae.edits import (
    ablate,
    check_latents,
    check_sae_for_model,
    latent_direction,
    splice,
    steer_latent,
)

D, M = 64, 192


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    _, config, params = load_model(str(tiny_model_dir), jnp.float32)
    return config, params


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(5)
    tokens = rng.integers(0, 1000, size=(2, 80)).astype(np.int32)
    return jnp.asarray(tokens), jnp.asarray([80, 57], jnp.int32)


def make_sae(arch, hook, *, seed=0, hook_out=None, rescale=False, d_in=D):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(M, d_in))
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    if rescale:
        w *= rng.uniform(0.5, 2.0, size=(M, 1))
    cfg = SAEConfig(arch, d_in, M, d_in, k=12 if arch == "topk" else None, hook_name=hook, hook_name_out=hook_out,
                    apply_b_dec_to_input=hook_out is None, rescale_acts_by_decoder_norm=rescale)
    threshold = np.full(M, 0.3) if arch == "jumprelu" else None
    return new_sae(cfg, w.T, rng.normal(size=M) * 0.1, w, rng.normal(size=d_in) * 0.1, threshold)


@pytest.mark.parametrize("arch,hook", [("topk", "blocks.1.hook_resid_post"), ("standard", "blocks.2.hook_mlp_out"),
                                       ("jumprelu", "blocks.0.hook_attn_out")])
def test_splice_with_the_error_term_equals_the_clean_model(model, batch, arch, hook):
    config, params = model
    tokens, lengths = batch
    sae = make_sae(arch, hook)
    clean = forward_jit(params, config, tokens, lengths, logits=True)["logits"]
    kept = forward_jit(params, config, tokens, lengths, logits=True, edits={hook: splice(sae, keep_error=True)})
    spliced = forward_jit(params, config, tokens, lengths, logits=True, edits={hook: splice(sae)})
    for b, n in enumerate(np.asarray(lengths)):
        assert rel_err(kept["logits"][b, :n], clean[b, :n]) <= 1e-5
        assert rel_err(spliced["logits"][b, :n], clean[b, :n]) > 1e-3


def test_splice_replaces_the_activation_by_the_reconstruction(model, batch):
    config, params = model
    tokens, lengths = batch
    hook = "blocks.1.hook_resid_post"
    sae = make_sae("topk", hook)
    clean = forward_jit(params, config, tokens, lengths, hooks=(hook,))[hook]
    out = forward_jit(params, config, tokens, lengths, hooks=(hook,), edits={hook: splice(sae)})[hook]
    np.testing.assert_allclose(np.asarray(out), np.asarray(decode(sae, encode(sae, clean))), rtol=1e-5, atol=1e-5)


def test_ablation_with_the_error_term_removes_exactly_the_latents_contributions(model, batch):
    config, params = model
    tokens, lengths = batch
    hook = "blocks.2.hook_resid_pre"
    sae = make_sae("topk", hook, rescale=True)
    clean = forward_jit(params, config, tokens, lengths, hooks=(hook,))[hook]
    z = np.asarray(encode(sae, clean))
    latents = list(np.argsort(-(z != 0).sum((0, 1)))[:3])  # the three that fire most
    out = forward_jit(params, config, tokens, lengths, hooks=(hook,), edits={hook: ablate(sae, latents)})[hook]
    contribution = sum(z[..., i : i + 1] * np.asarray(latent_direction(sae, i))[None, None] for i in latents)
    np.testing.assert_allclose(np.asarray(out), np.asarray(clean) - contribution, rtol=1e-5, atol=1e-5)
    assert np.abs(contribution).max() > 0.1
    # the same program for another set of latents (the mask is a traced parameter)
    size = qwen._forward_jit._cache_size()
    other = forward_jit(params, config, tokens, lengths, hooks=(hook,), edits={hook: ablate(sae, [int(latents[0])])})
    assert qwen._forward_jit._cache_size() == size
    assert not np.allclose(np.asarray(other[hook]), np.asarray(out))


def test_ablation_without_the_error_term_is_the_reconstruction_from_the_other_latents(model, batch):
    config, params = model
    tokens, lengths = batch
    hook = "blocks.1.hook_mlp_out"
    sae = make_sae("standard", hook)
    out = forward_jit(params, config, tokens, lengths, hooks=(hook,),
                      edits={hook: ablate(sae, range(M), keep_error=False)})[hook]
    np.testing.assert_allclose(np.asarray(out), np.broadcast_to(np.asarray(sae.b_dec), out.shape), atol=1e-6)


def test_transcoder_splice_reads_its_input_hook_and_writes_its_output_hook(model, batch):
    config, params = model
    tokens, lengths = batch
    tc = make_sae("standard", "blocks.1.hook_resid_mid", hook_out="blocks.1.hook_mlp_out", seed=3)
    hooks = ("blocks.1.hook_resid_mid", "blocks.1.hook_mlp_out", "blocks.1.hook_resid_post")
    out = forward_jit(params, config, tokens, lengths, hooks=hooks, edits={tc.cfg.output_hook: splice(tc)})
    want = decode(tc, encode(tc, out["blocks.1.hook_resid_mid"]))
    np.testing.assert_allclose(np.asarray(out["blocks.1.hook_mlp_out"]), np.asarray(want), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out["blocks.1.hook_resid_post"]),
                               np.asarray(out["blocks.1.hook_resid_mid"] + want), rtol=1e-5, atol=1e-5)
    clean = forward_jit(params, config, tokens, lengths, logits=True)["logits"]
    kept = forward_jit(params, config, tokens, lengths, logits=True, edits={tc.cfg.output_hook: splice(tc, True)})
    assert rel_err(kept["logits"], clean) <= 1e-5


def test_a_splice_or_ablation_put_at_another_hook_than_its_saes_is_refused(model, batch):
    """A transcoder's edit at its input hook, or an SAE's at another layer, would encode an
    activation the SAE was never trained on, silently: one line names the hook it belongs at."""
    config, params = model
    tokens, lengths = batch
    tc = make_sae("standard", "blocks.1.hook_resid_mid", hook_out="blocks.1.hook_mlp_out", seed=3)
    sae = make_sae("topk", "blocks.1.hook_resid_post")
    for hook, edit, name in (("blocks.1.hook_resid_mid", splice(tc), "splice"),
                             ("blocks.2.hook_resid_post", splice(sae, True), "splice(keep_error)"),
                             ("blocks.0.hook_resid_post", ablate(sae, [3]), "ablate")):
        with pytest.raises(UserError, match=f"this {re.escape(name)} is made for {edit.hook} .*put it at {edit.hook}"):
            forward_jit(params, config, tokens, lengths, edits={hook: edit})
    # at its own hook it runs
    forward_jit(params, config, tokens, lengths, edits={"blocks.1.hook_mlp_out": splice(tc)})
    steered = steer_latent(sae, 3, 2.0)  # steering adds a direction: any hook may take it
    forward_jit(params, config, tokens, lengths, edits={"blocks.0.hook_resid_post": steered})


def test_steer_along_a_latent_adds_its_decoder_direction(model, batch):
    config, params = model
    tokens, lengths = batch
    hook = "blocks.1.hook_resid_post"
    sae = make_sae("topk", hook, rescale=True)
    clean = forward_jit(params, config, tokens, lengths, hooks=(hook,))[hook]
    out = forward_jit(params, config, tokens, lengths, hooks=(hook,), edits={hook: steer_latent(sae, 7, 4.0)})[hook]
    row = np.asarray(sae.W_dec[7])
    np.testing.assert_allclose(np.asarray(out - clean), np.broadcast_to(4.0 * row / np.linalg.norm(row), out.shape),
                               atol=1e-5)
    # one unit of the latent in the SAE's own decode is the same vector
    z = jnp.zeros(M).at[7].set(1.0)
    np.testing.assert_allclose(np.asarray(decode(sae, z) - sae.b_dec), np.asarray(latent_direction(sae, 7)), atol=1e-6)


def test_a_bfloat16_model_takes_a_float32_sae(tiny_model_dir, batch):
    _, config, params = load_model(str(tiny_model_dir), jnp.bfloat16)
    tokens, lengths = batch
    hook = "blocks.1.hook_resid_post"
    out = forward_jit(params, config, tokens, lengths, hooks=(hook,), logits=True,
                      edits={hook: splice(make_sae("topk", hook))})
    assert out[hook].dtype == jnp.bfloat16 and bool(jnp.isfinite(out["logits"]).all())


def test_latents_out_of_range_and_other_bad_indices():
    sae = make_sae("topk", "blocks.1.hook_resid_post")
    assert check_latents(sae, [0, np.int64(5), "7", M - 1]) == [0, 5, 7, M - 1]
    for bad, match in ((M, f"out of range.*{M} latents"), (-1, "out of range"), (2.5, "integer"), ("x", "integer")):
        with pytest.raises(UserError, match=match):
            ablate(sae, [bad])
    with pytest.raises(UserError, match="out of range"):
        steer_latent(sae, M + 3, 1.0)
    with pytest.raises(UserError, match="no latents"):
        ablate(sae, [])


def test_an_sae_for_another_model_width_or_hook_is_refused(model):
    config, _ = model
    check_sae_for_model(make_sae("topk", "blocks.3.hook_resid_post"), config)
    cases = [
        (make_sae("topk", "blocks.1.hook_resid_post", d_in=32), "d_in is 32.*64 dimensions"),
        (make_sae("topk", "blocks.4.hook_resid_post"), "not a hook of this 4-layer model"),
        (make_sae("topk", "blocks.1.hook_resid_post").replace(
            cfg=dataclasses.replace(make_sae("topk", "x").cfg, hook_name=None)), "names no hook"),
        (make_sae("standard", "blocks.2.hook_mlp_out", hook_out="blocks.2.hook_attn_out"), "must come before"),
    ]
    for sae, match in cases:
        with pytest.raises(UserError, match=match):
            check_sae_for_model(sae, config, "--sae X")
