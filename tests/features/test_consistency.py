"""Augmentation consistency streamed by group (features/consistency.py) against its definition,
computed pair by pair: per latent, the mean over the original cells it fires on, of those seen
under at least two augmentations, of the share of them in which it fires on the cell. Both ways
of counting each latent's cells (a bitmap, a sort) are checked."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arclens.features import consistency
from arclens.features.consistency import Consistency


@st.composite
def groups(draw):
    """Per group, its samples: (original cells shown, each once; fired (cell, latent), each once)."""
    d_sae = draw(st.integers(1, 9))
    out = []
    for _ in range(draw(st.integers(1, 4))):
        cells_of_task = draw(st.lists(st.integers(0, 3000), min_size=1, max_size=12, unique=True))
        samples = []
        for _ in range(draw(st.integers(1, 5))):
            shown = sorted(draw(st.lists(st.sampled_from(cells_of_task), max_size=12, unique=True)))
            fired = sorted({(c, draw(st.integers(0, d_sae - 1))) for c in shown if draw(st.booleans())}
                           | {(c, draw(st.integers(0, d_sae - 1))) for c in shown if draw(st.booleans())})
            samples.append((shown, fired))
        out.append(samples)
    return d_sae, out


def by_definition(d_sae, groups):
    shares = [[] for _ in range(d_sae)]
    for samples in groups:
        n = {}
        for shown, _ in samples:
            for c in shown:
                n[c] = n.get(c, 0) + 1
        k = {}
        for _, fired in samples:
            for pair in fired:
                k[pair] = k.get(pair, 0) + 1
        for (c, latent), count in k.items():
            if n[c] >= 2:
                shares[latent].append(count / n[c])
    value = np.array([np.mean(s) if s else np.nan for s in shares])
    return value, np.array([len(s) for s in shares])


@pytest.mark.parametrize("bits_per_pair", [0, 10**9])  # (always a sort; always a bitmap)
@settings(max_examples=150, deadline=None)
@given(case=groups())
def test_consistency_is_its_definition(case, bits_per_pair):
    d_sae, gs = case
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(consistency, "_BITS_PER_PAIR", bits_per_pair)
        c = Consistency(d_sae, np.array([len(samples) for samples in gs]))
        # the samples of the groups interleaved, as a store's batches mix groups at their edges
        order = sorted((i, g) for g, samples in enumerate(gs) for i in range(len(samples)))
        for i, g in order:
            shown, fired = gs[g][i]
            codes = np.array([cell * d_sae + latent for cell, latent in fired], np.int32)
            c.add_sample(g, np.array(shown, np.int64), codes)
        value, cells = c.finish()
    want, want_cells = by_definition(d_sae, gs)
    np.testing.assert_array_equal(cells, want_cells)
    np.testing.assert_allclose(value, want, rtol=1e-12, equal_nan=True)


@pytest.mark.parametrize("n", [2, 6, 7, 9, 10, 19])
def test_a_latent_on_every_augmentation_is_exactly_1(n):
    """A latent that fires on its cells in all n samples of a group scores exactly 1.0 (k/n for
    k = n), never a sum of n terms 1/n that rounds to 0.9999999999999999 or 1.0000000000000002."""
    c = Consistency(2, np.array([n, n]))
    for group in range(2):
        for _ in range(n):
            cells = np.array([5, 17, 40], np.int64)
            c.add_sample(group, cells, (cells * 2 + 1).astype(np.int32))  # latent 1 on every cell
    value, cells = c.finish()
    assert cells.tolist() == [0, 6] and np.isnan(value[0]) and value[1] == 1.0
