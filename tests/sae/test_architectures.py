"""The training math against plain dense references: the sparse TopK/BatchTopK paths give the dense
values and gradients, AuxK's pooled branches equal AuxK over every latent, the straight-through
estimators give the paper's gradients, and the step keeps the recipe's invariants."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arclens.sae import recipe as R
from arclens.sae.architectures import ArchConfig, Params, aux_capacities, auxk, forward
from arclens.sae.train_state import init_state, sae_step, step_configs, unit_rows

D, S, B = 16, 40, 64


def _params(seed=0, threshold=False, d_out=D):
    k = jax.random.split(jax.random.PRNGKey(seed), 5)
    return Params(W_enc=jax.random.normal(k[0], (S, D)) / 4, b_enc=jax.random.normal(k[1], (S,)) / 10,
                  W_dec=unit_rows(jax.random.normal(k[2], (S, d_out))), b_dec=jax.random.normal(k[3], (d_out,)) / 10,
                  threshold=jnp.abs(jax.random.normal(k[4], (S,))) * 0.3 if threshold else None)


def _cfg(arch, k=4, aux_k=8, candidates=None, d_out=D, apply=True):
    return ArchConfig(arch=arch, d_in=D, d_out=d_out, d_sae=S, k=k, aux_k=aux_k, aux_coef=1 / 32,
                      apply_b_dec_to_input=apply, decoder_norm="unit", bandwidth=0.05,
                      candidates=candidates or min(S, 4 * k))


def _x(seed=1, n=B, d=D):
    return jax.random.normal(jax.random.PRNGKey(seed), (n, d))


def _dense_topk_loss(p, cfg, x, y):
    pre = (x - p.b_dec) @ p.W_enc.T + p.b_enc
    vals, idx = jax.lax.top_k(pre, cfg.k)
    z = jnp.zeros_like(pre).at[jnp.arange(x.shape[0])[:, None], idx].set(jax.nn.relu(vals))
    y_hat = z @ p.W_dec + p.b_dec
    return jnp.sum((y - y_hat) ** 2) / jnp.sum((y - y.mean(0)) ** 2)


def _tree_close(a, b, tol):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=tol, atol=tol)


def test_sparse_topk_equals_dense_values_and_gradients():
    p, cfg, x = _params(), _cfg("topk"), _x()
    ours = jax.jit(jax.value_and_grad(lambda p: forward(p, cfg, x, x, 0.0).loss))(p)
    dense = jax.jit(jax.value_and_grad(lambda p: _dense_topk_loss(p, cfg, x, x)))(p)
    np.testing.assert_allclose(ours[0], dense[0], rtol=1e-5)
    _tree_close(ours[1], dense[1], 2e-5)


def test_batchtopk_keeps_the_k_times_batch_largest_activations():
    p, cfg, x = _params(2), _cfg("batchtopk", k=3, candidates=S), _x(3)
    f = jax.jit(lambda p: forward(p, cfg, x, x, 0.0))(p)
    pre = jax.nn.relu((x - p.b_dec) @ p.W_enc.T + p.b_enc)
    kth = jnp.sort(pre.reshape(-1))[-3 * B]
    z_ref = jnp.where(pre >= kth, pre, 0.0)
    y_ref = z_ref @ p.W_dec + p.b_dec
    np.testing.assert_allclose(f.recon, jnp.sum((x - y_ref) ** 2), rtol=1e-5)
    assert float(f.l0) * B == pytest.approx(3 * B)
    np.testing.assert_allclose(f.min_kept, kth, rtol=1e-5)
    # The per-token candidate pool (4k) gives the same answer unless a token overflows it.
    small = jax.jit(lambda p: forward(p, _cfg("batchtopk", k=3), x, x, 0.0))(p)
    if float(small.overflow) == 0:
        np.testing.assert_allclose(small.recon, f.recon, rtol=1e-5)


def _aux_reference(p, cfg, x, residual, dead, n_dead):
    """AuxK over every latent: top aux_k of the dead latents' pre-activations, dense."""
    pre = (x - p.b_dec) @ p.W_enc.T + p.b_enc
    masked = jnp.where(dead[None], pre, -jnp.inf)
    kk = min(cfg.aux_k, n_dead)
    vals, idx = jax.lax.top_k(masked, kk)
    z = jnp.zeros_like(pre).at[jnp.arange(x.shape[0])[:, None], idx].set(jax.nn.relu(vals))
    e_hat = z @ p.W_dec
    loss = jnp.sum((residual - e_hat) ** 2) / jnp.sum((residual - residual.mean(0)) ** 2)
    return cfg.aux_coef * min(n_dead / cfg.aux_k, 1.0) * loss


@pytest.mark.parametrize("n_dead", [0, 3, 8, 9, 31, 40])
def test_auxk_pools_equal_auxk_over_every_latent(n_dead):
    p, x = _params(4), _x(5)
    cfg = dataclasses.replace(_cfg("topk", aux_k=8), aux_pool=S)  # pools up to every latent: exact
    assert aux_capacities(8, S, S) == (8, 16, 32, 40) and aux_capacities(8, S) == (8, 16, 32)
    dead = jnp.zeros((S,), bool).at[jax.random.permutation(jax.random.PRNGKey(n_dead), S)[:n_dead]].set(True)
    residual = _x(6) * 0.3
    ours = jax.jit(lambda p: auxk(p, cfg, x, residual, dead))(p)
    if n_dead == 0:
        assert float(ours[0]) == 0.0 and all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(ours[1]))
        return
    ref = jax.jit(jax.value_and_grad(lambda p: _aux_reference(p, cfg, x, residual, dead, n_dead)))(p)
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-5)
    _tree_close(ours[1], ref[1], 2e-5)


def test_auxk_beyond_its_pool_takes_a_rotating_window_of_the_dead():
    p, x, residual = _params(4), _x(5), _x(6) * 0.3
    cfg = dataclasses.replace(_cfg("topk", aux_k=4), aux_pool=8)
    dead_ids = np.sort(np.asarray(jax.random.permutation(jax.random.PRNGKey(1), S)[:20]))
    dead = jnp.zeros((S,), bool).at[dead_ids].set(True)
    seen = set()
    for step in range(3):
        window = [int(dead_ids[(step * 8 + j) % 20]) for j in range(8)]
        seen |= set(window)
        only = jnp.zeros((S,), bool).at[jnp.asarray(window)].set(True)
        got = jax.jit(lambda p, s=step: auxk(p, cfg, x, residual, dead, s))(p)
        # the window's AuxK, scaled as for all 20 dead latents (min(20 / 4, 1) = 1)
        want = jax.jit(jax.value_and_grad(lambda p, o=only: _aux_reference(p, cfg, x, residual, o, 8)))(p)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
        _tree_close(got[1], want[1], 2e-5)
    assert seen == set(dead_ids.tolist())


def test_jumprelu_straight_through_gradients_are_the_papers():
    p, cfg, x = _params(7, threshold=True), _cfg("jumprelu"), _x(8)
    eps = cfg.bandwidth
    coef = 0.7
    g = jax.jit(jax.grad(lambda p: forward(p, cfg, x, x, coef).loss))(p)
    pre = (x - p.b_dec) @ p.W_enc.T + p.b_enc
    z = pre * (pre > p.threshold)
    y_hat = z @ p.W_dec + p.b_dec
    dz = -2 * (x - y_hat) @ p.W_dec.T / B  # d(mean sum-squared error)/dz
    kernel = ((jnp.abs((pre - p.threshold) / eps) < 0.5) / eps)
    want = -jnp.sum(dz * p.threshold * kernel, 0) - coef * jnp.sum(kernel, 0) / B
    np.testing.assert_allclose(g.threshold, want, rtol=1e-4, atol=1e-6)
    assert float(jnp.abs(want).max()) > 0  # some pre-activations sit within the kernel


def _settings(arch, **kw):
    spec = R.SAESpec(name="s", hook_in="h", hook_out=None, arch=arch, d_in=D, d_out=D, d_sae=S,
                     k=4 if arch in ("topk", "batchtopk") else None, sparsity_coef=kw.pop("coef", 0.5))
    return R.TrainSettings(saes=(spec,), tokens=100 * B, batch_tokens=B, **kw), spec


@pytest.mark.parametrize("arch", R.ARCHS)
def test_step_keeps_unit_decoder_rows_and_removes_the_parallel_gradient(arch):
    settings, spec = _settings(arch, recipe=R.Recipe(decoder_norm="unit"))
    cfg = step_configs(settings)[0]
    x = _x(9) * 3 + 2
    st = init_state(cfg, spec, settings, x, None)
    np.testing.assert_allclose(jnp.linalg.norm(st.params.W_dec, axis=-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(st.params.W_enc, st.params.W_dec)  # tied initialisation
    np.testing.assert_allclose(jnp.mean(jnp.sum((x * st.scale_in) ** 2, -1)), D, rtol=1e-5)  # E||x||^2 = d
    step = jax.jit(lambda s, i: sae_step(cfg, s, x, None, i))
    W0 = st.params.W_dec
    st, m = step(st, 0)
    # Adam's first moment after one step is (1 - b1) times the gradient it was given: the gradient
    # with its component along each (initial) row removed.
    mu = st.opt.mu.W_dec
    assert float(jnp.abs(mu).max()) > 0
    np.testing.assert_allclose(jnp.sum(mu * W0, -1), 0.0, atol=1e-6 * float(jnp.abs(mu).max()) * D)
    for i in range(1, 3):
        st, m = step(st, i)
        np.testing.assert_allclose(jnp.linalg.norm(st.params.W_dec, axis=-1), 1.0, rtol=1e-5)
        assert np.isfinite(float(m["loss"]))


def test_learning_rate_warms_up_holds_and_decays_to_zero():
    lrs = [float(R.lr_at(t, peak=1.0, n_steps=100, warmup=10, decay=20)) for t in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[50] == 1.0 and lrs[80] == pytest.approx(1.0) and lrs[90] == pytest.approx(0.5)
    assert lrs[99] == pytest.approx(0.05)  # the last step still moves; after it the lr would be 0
    assert R.default_lr(2**14) == R.LR_AT_16K and R.default_lr(2**16) == pytest.approx(R.LR_AT_16K / 2)


def test_a_latent_that_never_fires_is_dead_after_the_window():
    settings, spec = _settings("topk", recipe=R.Recipe(dead_window=3 * B))
    cfg = step_configs(settings)[0]
    x = _x(10)
    st = init_state(cfg, spec, settings, x, None)
    # Latent 0 can never win: its encoder row points away from every input, with a large negative bias.
    st = dataclasses.replace(st, params=dataclasses.replace(st.params, b_enc=st.params.b_enc.at[0].set(-1e6)))
    step = jax.jit(lambda s, i: sae_step(cfg, s, x, None, i))
    deads = []
    for i in range(4):
        st, m = step(st, i)
        deads.append(bool(st.trackers.since_fired[0] >= 3 * B))
    assert deads == [False, False, True, True]
    assert float(m["dead"]) >= 1 / S


def test_differences_name_every_field():
    a, _ = _settings("topk")
    b = dataclasses.replace(a, lr=0.01, saes=(dataclasses.replace(a.saes[0], k=5),))
    diffs = R.differences(a.to_json(), b.to_json())
    assert diffs == ["lr: None -> 0.01", "saes[0].k: 4 -> 5"]
