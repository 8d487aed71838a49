"""The per-pair counts made on the device (features/tally.py: the accelerator path) equal the
host's exactly: each histogram column and quantile interval for any float32 activation, and the
whole FDIR of a features run, with the device's counts moved to the host mid-pass (so that the
interval grids of the two halves are merged as a latent's max grows)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arclens.features import accumulate, tally


def _float32s(draw, low_exponent=-140, high_exponent=127):
    """Any non-negative finite float32, biased towards the values next to powers of two."""
    e = draw(st.integers(low_exponent, high_exponent))
    m = draw(st.integers(0, (1 << 24) - 1))
    v = np.float32(np.ldexp(np.float64(m), e - 24))
    return np.float32(np.nextafter(v, np.float32(draw(st.sampled_from([0, np.inf]))))) if draw(st.booleans()) else v


def _padded(v: np.ndarray, n: int = 32) -> np.ndarray:
    """One shape for every example (a new length would compile again)."""
    return np.pad(np.asarray(v, np.float32), (0, n - len(v)))


@settings(deadline=None)  # the first example compiles
@given(st.data())
def test_histogram_columns_from_float32_edges_equal_the_float64_search(data):
    """Host and device search the edges rounded up to float32; both equal the float64 search."""
    values = [np.float32(data.draw(st.sampled_from(accumulate.HIST_EDGES.tolist())))
              for _ in range(8)]  # the edges themselves, rounded to float32 both ways
    values = [np.nextafter(v, np.float32(t)) for v in values for t in (0, np.inf)] + values
    values += [_float32s(data.draw) for _ in range(16)]
    v = np.asarray(values, np.float32)
    want = np.searchsorted(accumulate.HIST_EDGES, v.astype(np.float64), side="right")
    np.testing.assert_array_equal(accumulate.hist_bins(v), want)  # the host's columns
    got = np.asarray(_columns(jnp.asarray(accumulate.EDGES32), jnp.asarray(_padded(v, 64))))[:len(v)]
    np.testing.assert_array_equal(got, want)  # the device's


_columns = jax.jit(lambda edges, v: jnp.searchsorted(edges, v, side="right"))
_intervals = jax.jit(tally.interval_of, static_argnums=2)


@settings(deadline=None)
@given(st.data())
def test_intervals_in_integers_equal_the_float64_floor(data):
    """floor(v * Q / 2**e) for float32 v below 2**e, at and next to every interval bound."""
    e = data.draw(st.integers(-100, 100))
    q = data.draw(st.one_of(st.integers(1, 40), st.integers(1, tally.MAX_QUANTILES - 1)))
    bounds = [np.float32(np.ldexp(j / q, e)) for j in data.draw(st.lists(st.integers(0, q - 1), max_size=6))]
    values = [np.nextafter(b, np.float32(t)) for b in bounds for t in (0, np.inf)] + bounds
    values += [np.float32(np.ldexp(np.float64(data.draw(st.integers(0, (1 << 24) - 1))), e - 24))
               for _ in range(8)]
    top = np.float32(np.ldexp(1.0, e))
    v = np.asarray([x for x in values if 0 <= x < top], np.float32)
    want = accumulate.interval_index(v, np.full(len(v), e, np.int64), q)
    got = np.asarray(_intervals(jnp.asarray(_padded(v)), jnp.full(32, e, jnp.int32), q))[:len(v)]
    np.testing.assert_array_equal(got, want)


def test_auto_counts_on_the_host_on_the_cpu():
    """The end-to-end check below compares against `exact_run`, which took "auto" on this CPU."""
    assert jax.default_backend() == "cpu"
    make = accumulate.Accumulator
    assert not make(4, np.ones(1), top_k=1, n_intervals=2, per_interval=1).device_tallies
    assert make(4, np.ones(1), top_k=1, n_intervals=2, per_interval=1, tallies="device").device_tallies
    with pytest.raises(ValueError, match="one of"):
        make(4, np.ones(1), top_k=1, n_intervals=2, per_interval=1, tallies="gpu")


def test_device_tallies_write_the_same_fdir(exact_run, exact_store, tmp_path, monkeypatch):
    """`exact_run` (host counts, checked against brute force in test_exact_statistics.py) and the
    same run with the counts on the device, moved to the host every 2-3 batches, write identical
    files."""
    from tests.support.fdirs import assert_same_fdir
    from tests.support.features_brute import SETTINGS

    from arclens.features.run import FeaturesSettings, run

    arch, _sae, fdir = exact_run
    merges, windows = [], []
    merge, move = accumulate.merge_intervals, accumulate.Accumulator._move_tallies
    # Every batch has at least batch_tokens slots: a move after every 2 or 3 batches, so that the
    # device merges its own counts too (between moves) and the host merges the moved ones
    monkeypatch.setattr(accumulate, "MOVE_TALLIES_EVERY", 3 * SETTINGS["batch_tokens"] + 1)
    monkeypatch.setattr(accumulate.Accumulator, "_move_tallies",
                        lambda self: windows.append(self._tallied_tokens) or move(self))
    monkeypatch.setattr(accumulate, "GC_EVERY", 2)  # as exact_run
    monkeypatch.setattr(accumulate, "merge_intervals", lambda c, s: merges.append(len(s)) or merge(c, s))
    out = tmp_path / "fdir"
    run(FeaturesSettings(sae=str(fdir.parent / "sae"), out=out, store=str(exact_store.dest), progress=False,
                         tallies="device", **SETTINGS))
    assert merges, "no latent's grid grew between two moves: the merge on the host went unchecked"
    assert max(windows) > 2 * SETTINGS["batch_tokens"], "no window of several batches: the device's merge went unchecked"
    assert_same_fdir(out, fdir, arch)


def _carried(batches: np.ndarray) -> np.ndarray:
    from arclens.features.device import add_compensated

    carry = (jnp.zeros(batches.shape[1:], jnp.float32), jnp.zeros(batches.shape[1:], jnp.float32))
    for b in batches:
        carry = add_compensated(carry, jnp.asarray(b))
    total, compensation = jax.device_get(carry)
    return total.astype(np.float64) + compensation.astype(np.float64)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 200))
def test_role_masses_carried_on_the_device_stay_within_float32_roundings_of_the_exact_total(seed, n_batches):
    """The pass's role masses (`Accumulator.role_mass`) are the device's compensated float32 sum of
    each batch's float32 sums: within a few float32 roundings of the exact total of any batches
    (values over 12 orders of magnitude, and zeros), however many there are."""
    import math

    rng = np.random.default_rng(seed)
    batches = (np.exp(rng.uniform(-14, 14, (n_batches, 4, 3))) * (rng.random((n_batches, 4, 3)) < 0.8)).astype(np.float32)
    got = _carried(batches)
    exact = np.array([[math.fsum(batches[:, i, j].astype(np.float64)) for j in range(3)] for i in range(4)])
    np.testing.assert_allclose(got, exact, rtol=3 * 2.0**-24, atol=0)


def test_a_plain_float32_carry_would_drift_where_the_compensated_one_does_not():
    batches = np.full((20_000, 1, 1), np.float32(0.1), np.float32)
    exact = 20_000 * np.float64(np.float32(0.1))
    naive = np.float32(0)
    for b in batches[:, 0, 0]:
        naive = np.float32(naive + b)
    assert abs(float(naive) - exact) / exact > 1e-5  # what carrying a plain float32 sum would give
    assert abs(_carried(batches)[0, 0] - exact) / exact < 2.0**-24
