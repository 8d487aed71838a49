"""Training state of each SAE and the one jitted step that updates every SAE of a run.

``SAEState`` is a pytree: parameters (float32), Adam's moments, the dead/dense trackers, the
BatchTopK threshold estimate and the input scales. Everything a resumed run needs is in it, so a
checkpoint is the state's leaves plus the data position.

``make_step(configs)`` returns ``step(states, batch, step_index) -> (states, metrics)`` jitted
once for all the SAEs of a run: each reads its hooks from the shared ``batch`` (several hooks,
or a sweep of k or widths on one hook), so the activations are read from the store and moved to
the device once per step however many SAEs train on them.
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import optax

from arclens.sae import recipe as R
from arclens.sae.architectures import ArchConfig, Params, forward

_NEVER = 2**30  # since_fired saturates here (int32)


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Trackers:
    since_fired: jax.Array  # int32 [d_sae]: tokens since the latent last fired
    window_fires: jax.Array  # float32 [d_sae]: firings in the current evaluation window
    window_tokens: jax.Array  # float32 []: tokens in the current evaluation window
    last_freq: jax.Array  # float32 [d_sae]: firing frequency over the last complete window (-1: none yet)
    thr_ema: jax.Array  # float32 []: BatchTopK threshold, EMA before bias correction
    thr_weight: jax.Array  # float32 []: the EMA's total weight, for the bias correction


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class SAEState:
    params: Params
    opt: optax.ScaleByAdamState
    trackers: Trackers
    scale_in: jax.Array  # float32 []: inputs are multiplied by this
    scale_out: jax.Array  # float32 []: targets are multiplied by this (== scale_in for an SAE)


@dataclass(frozen=True)
class StepConfig:
    """Static per-SAE settings of the jitted step (hashable)."""

    arch: ArchConfig
    hook_in: str
    hook_out: str | None
    lr: float
    n_steps: int
    warmup: int
    decay: int
    sparsity_coef: float
    sparsity_warmup: int
    dead_window: int
    eval_window: int


def step_configs(settings: R.TrainSettings) -> tuple[StepConfig, ...]:
    rec = settings.recipe
    out = []
    for spec in settings.saes:
        arch = ArchConfig(
            arch=spec.arch, d_in=spec.d_in, d_out=spec.d_out, d_sae=spec.d_sae, k=spec.k,
            aux_k=settings.aux_k(spec), aux_coef=rec.aux_coef,
            apply_b_dec_to_input=not spec.is_transcoder, decoder_norm=rec.decoder_norm_for(spec.arch),
            bandwidth=rec.bandwidth,
            candidates=min(spec.d_sae, max(spec.k or 1, rec.batchtopk_candidates * (spec.k or 1))),
        )
        coef = spec.sparsity_coef if spec.sparsity_coef is not None else 0.0
        out.append(StepConfig(
            arch=arch, hook_in=spec.hook_in, hook_out=spec.hook_out, lr=settings.lr_for(spec),
            n_steps=settings.n_steps, warmup=settings.warmup_steps(), decay=settings.decay_steps(),
            sparsity_coef=float(coef), sparsity_warmup=settings.sparsity_warmup_steps(),
            dead_window=settings.dead_window(), eval_window=settings.dead_window(),
        ))
    return tuple(out)


def adam() -> optax.GradientTransformation:
    return optax.scale_by_adam(b1=R.ADAM_B1, b2=R.ADAM_B2, eps=R.ADAM_EPS)


# ---------------------------------------------------------------------------------------------
# initialisation


def unit_rows(x):
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def geometric_median(x, iters: int = 64):
    """Weiszfeld's iterations from the mean: the point minimising the sum of distances."""
    x = x.astype(jnp.float32)

    def body(_, m):
        w = 1.0 / jnp.maximum(jnp.linalg.norm(x - m, axis=-1), 1e-6)
        return jnp.sum(w[:, None] * x, 0) / jnp.sum(w)

    return jax.lax.fori_loop(0, iters, body, jnp.mean(x, 0))


def input_scale(x) -> jax.Array:
    """The constant c with E||c x||^2 = d over the sample."""
    x = x.astype(jnp.float32)
    return jnp.sqrt(x.shape[-1] / jnp.maximum(jnp.mean(jnp.sum(x * x, -1)), 1e-12))


def sae_key(seed: int, name: str):
    """Each SAE's own key: adding an SAE to a sweep leaves the others' initialisation alone."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), zlib.crc32(name.encode()) & 0x7FFFFFFF)


def init_state(cfg: StepConfig, spec: R.SAESpec, settings: R.TrainSettings, x_sample, y_sample) -> SAEState:
    """A fresh state from a sample of raw inputs (and targets) of this SAE."""
    rec = settings.recipe
    a = cfg.arch
    if y_sample is None:
        y_sample = x_sample
    scale_in = input_scale(x_sample) if rec.scale_inputs else jnp.float32(1.0)
    scale_out = (input_scale(y_sample) if spec.is_transcoder else scale_in) if rec.scale_inputs else jnp.float32(1.0)
    k_dec, k_enc = jax.random.split(sae_key(settings.seed, spec.name))
    norm = 0.1 if a.decoder_norm == "free" else 1.0  # Anthropic's init for an unconstrained decoder
    W_dec = unit_rows(jax.random.normal(k_dec, (a.d_sae, a.d_out), jnp.float32)) * norm
    if rec.tied_init and a.d_in == a.d_out:
        W_enc = jnp.array(W_dec, copy=True)  # its own buffer: the step donates both
    else:
        W_enc = unit_rows(jax.random.normal(k_enc, (a.d_sae, a.d_in), jnp.float32)) * norm
    y = y_sample.astype(jnp.float32) * scale_out
    b_dec = {"median": lambda: geometric_median(y), "mean": lambda: jnp.mean(y, 0),
             "zeros": lambda: jnp.zeros((a.d_out,), jnp.float32)}[rec.b_dec_init]()
    threshold = jnp.full((a.d_sae,), rec.init_threshold, jnp.float32) if a.arch == "jumprelu" else None
    params = Params(W_enc=W_enc, b_enc=jnp.zeros((a.d_sae,), jnp.float32), W_dec=W_dec, b_dec=b_dec,
                    threshold=threshold)
    trackers = Trackers(
        since_fired=jnp.zeros((a.d_sae,), jnp.int32), window_fires=jnp.zeros((a.d_sae,), jnp.float32),
        window_tokens=jnp.zeros((), jnp.float32), last_freq=jnp.full((a.d_sae,), -1.0, jnp.float32),
        thr_ema=jnp.zeros((), jnp.float32), thr_weight=jnp.zeros((), jnp.float32),
    )
    return SAEState(params=params, opt=adam().init(params), trackers=trackers,
                    scale_in=jnp.array(scale_in, jnp.float32, copy=True),
                    scale_out=jnp.array(scale_out, jnp.float32, copy=True))


# ---------------------------------------------------------------------------------------------
# the step


def _remove_parallel(grad_dec, W_dec):
    """The gradient's component along each decoder row, removed (the row stays on its sphere)."""
    along = jnp.sum(grad_dec * W_dec, -1, keepdims=True) / jnp.maximum(jnp.sum(W_dec * W_dec, -1, keepdims=True), 1e-12)
    return grad_dec - along * W_dec


def batchtopk_threshold(tr: Trackers):
    return jnp.where(tr.thr_weight > 0, tr.thr_ema / jnp.maximum(tr.thr_weight, 1e-12), 0.0)


def sae_step(cfg: StepConfig, state: SAEState, x_raw, y_raw, step):
    a = cfg.arch
    x = x_raw.astype(jnp.float32) * state.scale_in
    y = x if cfg.hook_out is None else y_raw.astype(jnp.float32) * state.scale_out
    tr = state.trackers
    dead = tr.since_fired >= cfg.dead_window
    coef = cfg.sparsity_coef * jnp.minimum(1.0, (step + 1.0) / cfg.sparsity_warmup)

    def loss_fn(p):
        f = forward(p, a, x, y, dead, coef)
        return f.loss, f

    (_, f), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    p = state.params
    if a.decoder_norm == "unit":
        grads = dataclasses.replace(grads, W_dec=_remove_parallel(grads.W_dec, p.W_dec))
    updates, opt = adam().update(grads, state.opt, p)
    lr = R.lr_at(step, peak=cfg.lr, n_steps=cfg.n_steps, warmup=cfg.warmup, decay=cfg.decay)
    p = jax.tree.map(lambda w, u: w - lr * u, p, updates)
    if a.decoder_norm == "unit":
        p = dataclasses.replace(p, W_dec=unit_rows(p.W_dec))
    if p.threshold is not None:
        p = dataclasses.replace(p, threshold=jnp.maximum(p.threshold, 0.0))

    B = x.shape[0]
    fired = f.fires > 0
    since = jnp.where(fired, 0, jnp.minimum(tr.since_fired + B, _NEVER))
    fires = tr.window_fires + f.fires
    tokens = tr.window_tokens + B
    full = tokens >= cfg.eval_window
    last_freq = jnp.where(full, fires / tokens, tr.last_freq)
    thr_ema, thr_weight = tr.thr_ema, tr.thr_weight
    if a.arch == "batchtopk":
        thr_ema = (1 - R.THRESHOLD_EMA) * thr_ema + R.THRESHOLD_EMA * f.min_kept
        thr_weight = (1 - R.THRESHOLD_EMA) * thr_weight + R.THRESHOLD_EMA
    tr = Trackers(since_fired=since, window_fires=jnp.where(full, 0.0, fires), window_tokens=jnp.where(full, 0.0, tokens),
                  last_freq=last_freq, thr_ema=thr_ema, thr_weight=thr_weight)
    freq = jnp.where(last_freq >= 0, last_freq, fires / tokens)
    centred = jnp.sum(jnp.square(y - jnp.mean(y, 0)))
    if a.arch == "batchtopk":
        threshold = batchtopk_threshold(tr)
    elif p.threshold is not None:
        threshold = jnp.mean(p.threshold)
    else:
        threshold = jnp.zeros(())
    metrics = {
        "loss": f.loss, "fvu": f.recon / jnp.maximum(centred, 1e-12), "l0": f.l0,
        "dead": jnp.mean(since >= cfg.dead_window), "dense": jnp.mean(freq > R.DENSE_FREQUENCY),
        "aux_loss": f.aux_loss, "sparsity_loss": f.sparsity_loss, "lr": lr, "threshold": threshold,
        "overflow": f.overflow,
    }
    return SAEState(params=p, opt=opt, trackers=tr, scale_in=state.scale_in, scale_out=state.scale_out), metrics


def make_step(configs: tuple[StepConfig, ...], state_shardings=None, metric_sharding=None, donate: bool = True):
    """The jitted step for all SAEs: ``(states, batch {hook: [B, d]}, step) -> (states, metrics)``.
    With shardings, the states keep their layout from step to step (latents over ``model``)."""

    def step_all(states, batch, step):
        out_states, out_metrics = [], []
        for cfg, st in zip(configs, states):
            s, m = sae_step(cfg, st, batch[cfg.hook_in], batch[cfg.hook_out] if cfg.hook_out else None, step)
            out_states.append(s)
            out_metrics.append(m)
        return tuple(out_states), tuple(out_metrics)

    kwargs = {}
    if state_shardings is not None:
        kwargs["out_shardings"] = (state_shardings, metric_sharding)
    return jax.jit(step_all, donate_argnums=(0,) if donate else (), **kwargs)
