"""The per-pair counts of the features pass, tallied on the device.

Three counts grow with the firing (latent, token) pairs rather than the tokens: the activation
histogram ``[F, H]``, the firing tokens by quantile interval ``[F, Q]``, and the same by interval
and role column ``[F, Q, R]`` (coverage at every threshold). On the host they cost about half of
the accumulator's time per pair (a sort of ``pairs x 8`` codes, searchsorted, bincounts); on an
accelerator they are scatter-adds into arrays that stay on the device, carried from batch to
batch (donated, so updated in place), and brought back only every ~2**31 tokens and at the end.

Every count is exact and equal to the host's (features/accumulate.py), for normal float32
activations (a subnormal one follows the backend's flush-to-zero mode here):

- a histogram column is the number of edges <= v. The float64 edges are rounded *up* to float32
  once, so ``edge32 <= v`` holds exactly when ``edge <= v`` for every float32 ``v``;
- an interval is ``floor(v * Q / 2**e)`` in integers, from v's 24-bit mantissa (`interval_of`);
- when a latent's max crosses a power of two its intervals widen 2**s-fold, and interval j of the
  old grid lies inside interval j >> s of the new one (accumulate.merge_intervals).

The counts are int32 on the device: the accumulator moves them into its int64 arrays before any
could pass 2**31 (each is at most the number of tokens since the last move).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from arclens.features.layout import N_ROLE_COLUMNS

NO_EXPONENT = np.iinfo(np.int32).min  # a latent that has not fired yet has no interval grid
MAX_QUANTILES = 1 << 18  # (mantissa >> 12) * Q + (mantissa & 0xFFF) * Q >> 12 stays inside int32


def edges_up(edges: np.ndarray) -> np.ndarray:
    """float32 edges with ``edge32 <= v`` iff ``edge <= v`` for any float32 v: each float64 edge
    rounded up to the nearest float32."""
    e32 = np.asarray(edges, np.float64).astype(np.float32)
    low = e32.astype(np.float64) < edges
    e32[low] = np.nextafter(e32[low], np.float32(np.inf))
    return e32


class Tallies(NamedTuple):
    """The device's counts since they were last moved to the host, and each latent's interval grid."""

    exponent: jax.Array  # int32 [F]: intervals are [j, j+1) * 2**e / Q; NO_EXPONENT before any fire
    hist: jax.Array  # int32 [F, H]
    interval_counts: jax.Array  # int32 [F, Q]
    role_bins: jax.Array  # int32 [F, Q, R]


def device_bytes(d_sae: int, n_hist: int, n_intervals: int) -> int:
    """Bytes of one `Tallies` (a merge briefly holds two of the interval arrays)."""
    return 4 * d_sae * (1 + n_hist + n_intervals * (1 + N_ROLE_COLUMNS))


def new_tallies(d_sae: int, n_hist: int, n_intervals: int, exponent: np.ndarray | None = None) -> Tallies:
    e = np.full(d_sae, NO_EXPONENT, np.int32) if exponent is None else np.asarray(exponent, np.int32)
    return Tallies(jnp.asarray(e), jnp.zeros((d_sae, n_hist), jnp.int32),
                   jnp.zeros((d_sae, n_intervals), jnp.int32),
                   jnp.zeros((d_sae, n_intervals, N_ROLE_COLUMNS), jnp.int32))


def _merge(counts: jax.Array, shift: jax.Array) -> jax.Array:
    """accumulate.merge_intervals on the device: row f's interval j moves to j >> shift[f]."""
    f, q = counts.shape[:2]
    target = jnp.arange(q, dtype=jnp.int32)[None, :] >> jnp.minimum(shift, 31)[:, None]
    return jnp.zeros_like(counts).at[jnp.arange(f)[:, None], target].add(counts)


def interval_of(value: jax.Array, exponent: jax.Array, n_intervals: int) -> jax.Array:
    """floor(value * Q / 2**exponent) for float32 0 <= value < 2**exponent, exactly, in int32:
    value = M * 2**(ve - 24) with M its 24-bit mantissa, so the interval is M * Q >> d with
    d = exponent - ve + 24 >= 24; M * Q (up to 42 bits) is split at bit 12 of M to stay in int32."""
    mant, ve = jnp.frexp(value.astype(jnp.float32))
    m = (mant * (1 << 24)).astype(jnp.int32)  # exact: mant in [0.5, 1) has 24 significant bits
    hi, lo = m >> 12, m & 0xFFF
    return (hi * n_intervals + ((lo * n_intervals) >> 12)) >> jnp.clip(exponent - ve + 12, 0, 31)


def _tally(t: Tallies, latent, value, role_cols, batch_max, edges32, n_intervals: int):
    """Fold one batch's firing pairs into the tallies. ``latent`` int32 [P], ``value`` float32 [P]
    (0 for a slot that does not fire or is padding), ``role_cols`` int [P, 8] (the pair's token's
    role columns, -1 for none), ``batch_max`` float32 [F]. Returns (tallies, interval [P] int32)."""
    _, need = jnp.frexp(batch_max)
    fired = batch_max > 0
    had = t.exponent != NO_EXPONENT
    exponent = jnp.where(fired, jnp.where(had, jnp.maximum(t.exponent, need), need), t.exponent)
    shift = jnp.where(had, exponent - t.exponent, 0)
    interval_counts, role_bins = jax.lax.cond(
        jnp.any(shift > 0), lambda c, r: (_merge(c, shift), _merge(r, shift)), lambda c, r: (c, r),
        t.interval_counts, t.role_bins)
    on = value > 0
    lat = jnp.where(on, latent, 0)
    ones = on.astype(jnp.int32)
    interval = jnp.where(on, interval_of(value, exponent[lat], n_intervals), 0)
    bins = jnp.searchsorted(edges32, value, side="right").astype(jnp.int32)
    hist = t.hist.at[lat, bins].add(ones)
    interval_counts = interval_counts.at[lat, interval].add(ones)
    r = role_cols.shape[1]
    role_on = (role_cols >= 0) & on[:, None]
    role_bins = role_bins.at[jnp.broadcast_to(lat[:, None], (lat.shape[0], r)),
                             jnp.broadcast_to(interval[:, None], (lat.shape[0], r)),
                             jnp.where(role_on, role_cols, 0).astype(jnp.int32)].add(role_on.astype(jnp.int32))
    return Tallies(exponent, hist, interval_counts, role_bins), interval


@partial(jax.jit, static_argnames="n_intervals", donate_argnums=0)
def tally_pairs(t: Tallies, latent, token, value, count, role_cols, batch_max, edges32, *, n_intervals: int):
    """The first ``count`` of the flat pairs ``latent, token, value [P]`` (the rest is padding)
    of a batch whose tokens have ``role_cols [N, 8]``. Returns (tallies, interval [P])."""
    value = jnp.where(jnp.arange(value.shape[0]) < count, value, 0)
    return _tally(t, latent, value, role_cols[token], batch_max, edges32, n_intervals)


@partial(jax.jit, static_argnames="n_intervals", donate_argnums=0)
def tally_topk(t: Tallies, latent, value, role_cols, batch_max, edges32, *, n_intervals: int):
    """TopK codes ``(latent, value) [N, k]`` of tokens with ``role_cols [N, 8]``.
    Returns (tallies, interval [N, k])."""
    n, k = latent.shape
    t, interval = _tally(t, latent.reshape(-1), value.reshape(-1), jnp.repeat(role_cols, k, axis=0),
                         batch_max, edges32, n_intervals)
    return t, interval.reshape(n, k)
