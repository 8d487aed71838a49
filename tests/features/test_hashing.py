"""The quantile draw's hash (features/hashing.py): fixed values, so that the drawn examples of a
store never change silently between versions, and the in-place `latent_hashes` equal to its
formula written with `mix64`."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from arclens.features.hashing import _GOLDEN, latent_hashes, mix64, token_hashes


def test_the_hashes_are_the_ones_every_earlier_version_drew_with():
    tokens = token_hashes("007bbfb7/0", np.array([0, 1, 57, 4095]))
    assert tokens.tolist() == [3007936062961979328, 16211268812316486300, 157455097060723305, 8432021367875646124]
    assert latent_hashes(tokens, np.array([0, 5, 2047, 16383])).tolist() == [
        7460160383724044954, 7153082531950967348, 7044301779516594472, 2525857910581475060]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**31 - 1)), max_size=40),
       st.sampled_from([1, 3, 7, 1 << 15]))
def test_latent_hashes_is_its_formula(pairs, block):
    """`block`: pairs hashed a block at a time (the last block shorter, or the only one)."""
    import pytest

    from arclens.features import hashing

    token_hash = np.asarray([t for t, _ in pairs], np.uint64)
    latent = np.asarray([f for _, f in pairs], np.int64)
    with np.errstate(over="ignore"):
        want = (mix64(token_hash ^ (latent.astype(np.uint64) * _GOLDEN)) >> np.uint64(1)).astype(np.int64)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hashing, "_BLOCK", block)
        got = latent_hashes(token_hash, latent.astype(np.int32))
    assert got.dtype == np.int64 and got.tolist() == want.tolist()
    assert (got >= 0).all()
