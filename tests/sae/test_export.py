"""The exported SAE takes raw activations: the input scales are folded into its weights exactly."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arclens.sae import recipe as R
from arclens.sae.architectures import jumprelu
from arclens.sae.export import to_inference
from arclens.sae.train_state import Trackers, init_state, step_configs

D, S = 12, 30


def _state(arch, transcoder):
    spec = R.SAESpec(name="s", hook_in="a", hook_out="b" if transcoder else None, arch=arch, d_in=D, d_out=D,
                     d_sae=S, k=5 if arch in ("topk", "batchtopk") else None, sparsity_coef=0.1)
    settings = R.TrainSettings(saes=(spec,), tokens=640, batch_tokens=64)
    cfg = step_configs(settings)[0]
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(2.0, 3.0, (256, D)), jnp.float32)
    y = jnp.asarray(rng.normal(-1.0, 0.5, (256, D)), jnp.float32) if transcoder else None
    st = init_state(cfg, spec, settings, x, y)
    k = jax.random.split(jax.random.PRNGKey(1), 4)
    p = dataclasses.replace(st.params, W_enc=st.params.W_enc + 0.3 * jax.random.normal(k[0], (S, D)),
                            b_enc=0.2 * jax.random.normal(k[1], (S,)),
                            threshold=None if st.params.threshold is None else jnp.abs(jax.random.normal(k[2], (S,))))
    tr = dataclasses.replace(st.trackers, thr_ema=jnp.float32(0.3), thr_weight=jnp.float32(0.5))  # threshold 0.6
    st = dataclasses.replace(st, params=p, trackers=tr)
    assert float(st.scale_in) != pytest.approx(1.0) and (not transcoder or float(st.scale_out) != float(st.scale_in))
    return cfg, spec, st, np.asarray(x[:40]), np.asarray(x[40:80] * 0.5)


def _trained_function(cfg, spec, st: Trackers, x):
    """What the run computed on the scaled input, mapped back to raw units: (z, y_hat)."""
    p, c_in, c_out = st.params, st.scale_in, st.scale_out
    xs = x * c_in
    xc = xs - p.b_dec if cfg.arch.apply_b_dec_to_input else xs
    pre = xc @ p.W_enc.T + p.b_enc
    if spec.arch == "topk":
        vals, idx = jax.lax.top_k(pre, spec.k)
        z = jnp.zeros_like(pre).at[jnp.arange(len(x))[:, None], idx].set(jax.nn.relu(vals))
    elif spec.arch == "batchtopk":  # at inference: the JumpReLU with the learned global threshold
        z = jnp.where(pre > 0.6, pre, 0.0)
    elif spec.arch == "jumprelu":
        z = jumprelu(pre, p.threshold, 0.05)
    else:
        z = jax.nn.relu(pre)
    y_hat = z @ p.W_dec + p.b_dec
    return np.asarray(z / c_out), np.asarray(y_hat / c_out)


@pytest.mark.parametrize("transcoder", [False, True], ids=["sae", "transcoder"])
@pytest.mark.parametrize("arch", R.ARCHS)
def test_exported_sae_on_raw_inputs_is_the_trained_function(arch, transcoder):
    cfg, spec, st, x, x2 = _state(arch, transcoder)
    sae = to_inference(cfg, spec, st)
    assert sae.cfg.architecture == {"batchtopk": "jumprelu", "relu": "standard"}.get(arch, arch)
    for inputs in (x, x2):
        z_want, y_want = _trained_function(cfg, spec, st, inputs)
        z = np.asarray(sae.encode(inputs))
        assert (z > 0).any()
        np.testing.assert_allclose(z, z_want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(sae.decode(z)), y_want, rtol=1e-5, atol=1e-5)
    # Unit decoder rows stay unit rows (the latents are in the target's raw units); ReLU trains
    # its decoder norms freely, and they are exported as trained.
    norms = np.linalg.norm(np.asarray(sae.W_dec), axis=-1)
    np.testing.assert_allclose(norms, 1.0 if cfg.arch.decoder_norm == "unit" else np.linalg.norm(
        np.asarray(st.params.W_dec), axis=-1), rtol=1e-5)
