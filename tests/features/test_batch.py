"""The batch builder (features/batch.py): samples laid out with gaps between them (the model
source's one sample per row of ``[B, T]``) get, slot for slot, what they get laid end to end
(a store's batches), and padding slots keep their blanks."""

from __future__ import annotations

import numpy as np
import pytest
from tests.support import planted_roles as pr

from arclens.features.batch import COLUMNS, BatchBuilder
from arclens.features.sources import StoreSource, TaskGrids
from arclens.store.reader import open_store

PER_TOKEN = ("valid", "cell", "role_cols", "order", "token_hash", "sample_of")


def _samples(exact_store, n: int):
    source = StoreSource(open_store(str(exact_store.dest)), pr.HOOK, TaskGrids(exact_store.tasks, "the test's tasks"))
    out = []
    for info, arrays in source.store.samples(hooks=[pr.HOOK]):
        key = info["key"]
        out.append((source.plan.rank[key], source.plan.group[key], info, {c: arrays[c] for c in COLUMNS},
                    source.grids.sample_cells(info)))
        if len(out) == n:
            return out
    raise AssertionError("the store has fewer samples than the test needs")


def _build(samples, starts, size):
    builder = BatchBuilder(size)
    for start, (rank, group, info, columns, cells) in zip(starts, samples):
        builder.add(start, rank, group, info, columns, cells)
    return builder.build(np.zeros((size, 1), np.float32))


def test_samples_with_gaps_get_what_they_get_end_to_end(exact_store):
    samples = _samples(exact_store, 3)
    lengths = [len(s[3]["position"]) for s in samples]
    width = max(lengths) + 5
    packed = _build(samples, np.cumsum([0] + lengths[:-1]).tolist(), sum(lengths))
    gapped = _build(samples, [i * width for i in range(3)], 3 * width)
    for i, n in enumerate(lengths):
        a, b = packed.samples[i], gapped.samples[i]
        assert (b.start, b.end) == (i * width, i * width + n)
        np.testing.assert_array_equal(a.unique_cells, b.unique_cells)
        assert a.multi_token_cells == b.multi_token_cells
        for name in PER_TOKEN:
            np.testing.assert_array_equal(getattr(packed, name)[a.start:a.end], getattr(gapped, name)[b.start:b.end])
        for name in packed.roles:
            np.testing.assert_array_equal(packed.roles[name][a.start:a.end], gapped.roles[name][b.start:b.end])
        pad = slice(b.end, (i + 1) * width)  # the row's padding keeps the blanks
        assert (gapped.valid[pad] == 0).all() and (gapped.sample_of[pad] == -1).all()
        assert (gapped.cell[pad] == -1).all() and (gapped.role_cols[pad] == -1).all()
        assert (gapped.order[pad] == np.iinfo(np.int64).max).all()
        assert all((r[pad] == -1).all() for r in gapped.roles.values())
    assert (packed.cell >= 0).any()  # (the samples have cells: the comparison is not of blanks)


def test_unique_cells_are_each_samples_original_cells_once(exact_store):
    samples = _samples(exact_store, 3)
    lengths = [len(s[3]["position"]) for s in samples]
    batch = _build(samples, np.cumsum([0] + lengths[:-1]).tolist(), sum(lengths))
    for s in batch.samples:
        cells = batch.cell[s.start:s.end]
        np.testing.assert_array_equal(s.unique_cells, np.unique(cells[cells >= 0]))
        assert s.multi_token_cells == (len(s.unique_cells) < (cells >= 0).sum())


def test_samples_that_overlap_or_overrun_are_refused(exact_store):
    samples = _samples(exact_store, 2)
    n = len(samples[0][3]["position"])
    with pytest.raises(ValueError, match="overlap or overrun"):
        _build(samples, [0, n - 1], 4 * n + 100)
    with pytest.raises(ValueError, match="overlap or overrun"):
        _build(samples[:1], [1], n)
