"""The store source's batches: a released activation buffer is reused, and a batch built in a
reused buffer equals one built in a fresh one, padding slots zero."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support import planted_roles as pr

from arclens.features.sources import StoreSource, TaskGrids
from arclens.store.reader import open_store


def _source(exact_store) -> StoreSource:
    return StoreSource(open_store(str(exact_store.dest)), pr.HOOK, TaskGrids(exact_store.tasks, "the test's tasks"))


def test_a_reused_buffer_gives_the_batch_a_fresh_one_gives(exact_store):
    fresh = [b.x.copy() for b in _source(exact_store).batches(1024)]  # (never released: every buffer new)
    source, reused, buffers = _source(exact_store), [], set()
    for b in source.batches(1024):
        buffers.add(id(b.x))
        reused.append(b.x.copy())
        b.x[:] = np.nan  # (what a later batch finds in the buffer: none of it may show through)
        source.release(b)
        assert b.x is None
    assert len(fresh) == len(reused) > len(buffers)  # (batches of one shape took a released buffer)
    for a, b in zip(fresh, reused, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any((a == 0).all(axis=1).any() for a in fresh)  # (some padding slots, all zero)


def test_odd_sized_buffers_age_out_of_the_free_list(exact_store):
    """A sample longer than --batch-tokens makes a larger batch; its buffers must not crowd out
    the usual size's for the rest of the pass."""
    from types import SimpleNamespace

    source = _source(exact_store)
    d = source.store.d_model
    for _ in range(6):
        source.release(SimpleNamespace(x=np.empty((2048, d), np.float32)))
    usual = np.empty((1024, d), np.float32)
    source.release(SimpleNamespace(x=usual))
    assert source._buffer(1024, np.dtype(np.float32)) is usual


def test_batches_built_ahead_in_a_thread_are_the_same_batches(exact_store):
    plain = [(b.x.copy(), b.order.copy(), [s.info["key"] for s in b.samples])
             for b in _source(exact_store).batches(1024)]
    source, ahead = _source(exact_store), []
    for b in source.batches(1024, ahead=2):
        ahead.append((b.x.copy(), b.order.copy(), [s.info["key"] for s in b.samples]))
        source.release(b)
    assert len(plain) == len(ahead)
    for (x0, o0, k0), (x1, o1, k1) in zip(plain, ahead, strict=True):
        np.testing.assert_array_equal(x0, x1)
        np.testing.assert_array_equal(o0, o1)
        assert k0 == k1


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(0, 40), min_size=1, max_size=6), data=st.data())
def test_rows_copied_in_parts_are_the_samples_end_to_end(lengths, data):
    """The copy threads split a batch's rows anywhere, mid-sample too; together they copy every
    sample's rows to its place, and nothing past them."""
    from arclens.features.spans import copy_span

    parts = [np.arange(n * 3, dtype=np.float32).reshape(n, 3) + 1000 * i for i, n in enumerate(lengths)]
    filled = sum(lengths)
    cuts = sorted(data.draw(st.lists(st.integers(0, filled), max_size=4)) + [0, filled])
    x = np.full((filled + 2, 3), -1, np.float32)
    starts = np.cumsum([0, *lengths]).tolist()
    pieces = [(x[a:b], part) for a, b, part in zip(starts[:-1], starts[1:], parts)]
    for lo, hi in itertools.pairwise(cuts):
        copy_span(pieces, lo, hi)
    np.testing.assert_array_equal(x[:filled], np.concatenate(parts))
    assert (x[filled:] == -1).all()


def test_a_bad_sample_waits_for_the_copies_of_its_batch(exact_store, monkeypatch):
    """A sample the tasks cannot place raises its one-line error only once the batch's copy
    threads are done with the buffer (none is left writing into it)."""
    import threading
    import time

    import pytest

    from arclens.errors import UserError
    from arclens.features import sources

    source, done = _source(exact_store), []
    copy_span = sources.copy_span

    def slow_copy(*args):
        time.sleep(0.3)
        copy_span(*args)
        done.append(threading.current_thread().name)

    def refuse(info):
        raise UserError(f"sample {info['key']}: refused by the test")

    monkeypatch.setattr(sources, "copy_span", slow_copy)
    monkeypatch.setattr(source.grids, "sample_cells", refuse)
    with pytest.raises(UserError, match="refused by the test"):
        next(iter(source.batches(1024)))
    assert len(done) == 2  # (both copy threads had finished when the error reached the caller)
