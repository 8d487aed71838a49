"""A batch's firing pairs grouped by the fold's latent ranges (features/pairs.py): on the device
(`device.group_topk`, `device.group_pairs`: a counting sort) they are the very arrays numpy's cut
gives, for any codes, parts and padding; and a pass that groups them on the other side than
"auto" picks writes the same FDIR."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.fdirs import assert_same_fdir
from tests.support.features_brute import SETTINGS

from arclens.features import accumulate
from arclens.features.device import group_pairs, group_topk
from arclens.features.pairs import OnDevice, cut_on_host, latent_ranges, part_of_latent, topk_pairs


def _device_parts(ranges):
    return jnp.asarray(part_of_latent(ranges).astype(np.int32)), jnp.asarray(np.array([lo for lo, _ in ranges], np.int32))


def _assert_same(got, want):
    assert got.ranges == want.ranges
    np.testing.assert_array_equal(got.bounds, want.bounds)
    for name in ("latent", "token", "value", "interval"):
        a, b = getattr(got, name), getattr(want, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.dtype == b.dtype or name == "token", (name, a.dtype, b.dtype)
            np.testing.assert_array_equal(a, b, err_msg=name)


@st.composite
def topk_codes(draw):
    n, k = draw(st.integers(1, 40)), draw(st.integers(1, 6))
    d_sae = draw(st.integers(k, 50))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    latent = np.stack([rng.choice(d_sae, k, replace=False) for _ in range(n)]).astype(np.int32)
    value = rng.random((n, k)).astype(np.float32)
    value[rng.random((n, k)) < draw(st.sampled_from([0.0, 0.3, 1.0]))] = 0  # slots that do not fire
    interval = rng.integers(0, 10, (n, k)).astype(np.int32)
    n_parts = draw(st.integers(1, min(d_sae, 6)))
    return latent, value, interval, latent_ranges(d_sae, n_parts)


@settings(max_examples=40, deadline=None)  # (each new shape compiles)
@given(topk_codes(), st.booleans())
def test_topk_codes_grouped_on_the_device_equal_numpys_cut(codes, with_interval):
    latent, value, interval, ranges = codes
    interval = interval if with_interval else None
    grouped = group_topk(jnp.asarray(latent), jnp.asarray(value), None if interval is None else jnp.asarray(interval),
                         *_device_parts(ranges), n_parts=len(ranges))
    if interval is None:
        want = cut_on_host(topk_pairs(latent, value), None, ranges)
    else:
        want = cut_on_host(*topk_pairs(latent, value, interval), ranges)
    _assert_same(OnDevice(grouped, ranges)(), want)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 5), st.integers(0, 60))
def test_padded_pairs_grouped_on_the_device_equal_numpys_cut(seed, n_parts, count):
    """Flat pairs in token order, the first `count` real and the rest padding (whose values may
    be positive, as `firing_pairs` pads with z[0, 0]); some real values are 0."""
    rng = np.random.default_rng(seed)
    d_sae, size = 12, 64
    lat = rng.integers(0, d_sae, size).astype(np.int32)
    tok = np.sort(rng.integers(0, 30, size)).astype(np.int32)
    val = (rng.random(size) * (rng.random(size) < 0.9)).astype(np.float32)
    interval = rng.integers(0, 7, size).astype(np.int32)
    ranges = latent_ranges(d_sae, n_parts)
    grouped = group_pairs(*(jnp.asarray(a) for a in (lat, tok, val, interval)), count, *_device_parts(ranges),
                          n_parts=n_parts)
    fires = np.flatnonzero(val[:count] > 0)
    want = cut_on_host((lat[fires], tok[fires], val[fires]), interval[fires], ranges)
    _assert_same(OnDevice(grouped, ranges)(), want)


def test_host_cut_keeps_token_order_and_numbers_latents_from_their_range():
    ranges = latent_ranges(10, 3)  # [0, 3), [3, 7), [7, 10)
    lat = np.array([9, 0, 4, 3, 8, 1], np.int32)
    tok = np.array([0, 0, 1, 2, 2, 3])
    got = cut_on_host((lat, tok, lat.astype(np.float32)), None, ranges)
    assert got.bounds.tolist() == [0, 2, 4, 6]
    assert [got.part(i)[0][0].tolist() for i in range(3)] == [[0, 1], [1, 0], [2, 1]]
    assert [got.part(i)[0][1].tolist() for i in range(3)] == [[0, 3], [1, 2], [0, 2]]


@pytest.mark.parametrize("tallies, workers, on_device", [("host", 2, True), ("device", 1, False)])
def test_a_pass_grouping_on_the_other_side_writes_the_same_fdir(exact_run, exact_store, tmp_path, monkeypatch,
                                                                 tallies, workers, on_device):
    """"auto" groups on the device exactly when it tallies (on this CPU backend): here the device
    groups pairs whose counts the host makes, and the host cuts pairs the device tallied."""
    from arclens.features.run import FeaturesSettings, run

    arch, _sae, fdir = exact_run
    monkeypatch.setattr(accumulate, "GC_EVERY", 2)  # as exact_run
    chosen = []
    monkeypatch.setattr(accumulate.Accumulator, "_cut_on_device", lambda self, z: chosen.append(on_device) or on_device)
    out = tmp_path / "fdir"
    run(FeaturesSettings(sae=str(fdir.parent / "sae"), out=out, store=str(exact_store.dest), progress=False,
                         tallies=tallies, fold_workers=workers, **SETTINGS))
    assert len(chosen) > 4
    assert_same_fdir(out, fdir, f"{arch}, {tallies} counts, grouped on the {'device' if on_device else 'host'}")
