"""The store source's data order: every token once per epoch, a function of the seed alone, the
same rows for every hook, and a position that a resumed run seeks to without reading what came
before."""

from __future__ import annotations

from itertools import islice

import numpy as np
import pytest
from tests.support import synth_store

import arclens
from arclens.sae.store_source import Position, StoreSource


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    dest = str(tmp_path_factory.mktemp("src") / "store")
    synth_store.write(dest, synth_store.keys(30), shard_bytes=3000, dtype="float32")
    return arclens.open_store(dest)


def _ids(batch: dict) -> np.ndarray:
    """A token's identity: its first hook's row (random floats, unique per token)."""
    return batch[synth_store.HOOKS[0]][:, 0]


def _stream(store, seed=0, bs=64, position=None, n=None):
    src = StoreSource(store, synth_store.HOOKS, batch_tokens=bs, seed=seed)
    return list(islice(src.host_batches(position), n)), src


def test_every_token_once_per_epoch_then_the_next_epoch(store):
    n_batches = store.n_tokens // 64
    batches, _ = _stream(store, n=2 * n_batches + 1)
    assert len(store.shards) > 8  # several windows of 4 shards
    first = np.concatenate([_ids(b.arrays) for b in batches[:n_batches]])
    everything = np.concatenate([a[synth_store.HOOKS[0]][:, 0] for _, a in store.samples()])
    # An epoch is every token once, except the fewer-than-a-batch carried into the next epoch.
    assert len(set(first)) == len(first)
    assert set(first) <= set(everything) and len(everything) - len(first) < 64
    second = np.concatenate([_ids(b.arrays) for b in batches[n_batches: 2 * n_batches]])
    assert not np.array_equal(first, second), "each epoch has its own order"
    both = np.concatenate([first, second])
    counts = np.unique(both, return_counts=True)[1]
    assert counts.max() <= 2


def test_order_is_a_function_of_the_seed(store):
    a, _ = _stream(store, seed=1, n=6)
    b, _ = _stream(store, seed=1, n=6)
    c, _ = _stream(store, seed=2, n=6)
    for x, y in zip(a, b):
        for h in synth_store.HOOKS:
            np.testing.assert_array_equal(x.arrays[h], y.arrays[h])
    assert not np.array_equal(_ids(a[0].arrays), _ids(c[0].arrays))


def test_hooks_share_the_token_order(store):
    batches, _ = _stream(store, n=5)
    table = {}
    for _, arrays in store.samples():
        for i in range(len(arrays["position"])):
            table[float(arrays[synth_store.HOOKS[0]][i, 0])] = arrays[synth_store.HOOKS[1]][i]
    for b in batches:
        for row0, row1 in zip(b.arrays[synth_store.HOOKS[0]], b.arrays[synth_store.HOOKS[1]]):
            np.testing.assert_array_equal(table[float(row0[0])], row1)


@pytest.mark.parametrize("skip", [1, 7, 13, 40])
def test_seeking_to_a_saved_position_continues_exactly(store, skip):
    full, _ = _stream(store, n=skip + 6)
    pos = full[skip - 1].position
    # Through a checkpoint's JSON and arrays, as a resumed run sees it.
    src = StoreSource(store, synth_store.HOOKS, batch_tokens=64, seed=0)
    doc, arrays = src.position_to_checkpoint(pos)
    restored = src.position_from_checkpoint(doc, {k: np.array(v) for k, v in arrays.items()})
    resumed = list(islice(src.host_batches(restored), 6))
    for x, y in zip(full[skip:], resumed):
        for h in synth_store.HOOKS:
            np.testing.assert_array_equal(x.arrays[h], y.arrays[h])


def test_a_process_gets_only_its_rows(store):
    full, _ = _stream(store, n=3)
    src = StoreSource(store, synth_store.HOOKS, batch_tokens=64, seed=0, rows=slice(32, 64))
    part = list(islice(src.host_batches(), 3))
    for x, y in zip(full, part):
        np.testing.assert_array_equal(x.arrays[synth_store.HOOKS[1]][32:], y.arrays[synth_store.HOOKS[1]])


def test_a_batch_larger_than_a_window_carries_over(store):
    bs = store.n_tokens // 3  # more than one window of shards
    batches, _ = _stream(store, bs=bs, n=6)
    ids = np.concatenate([_ids(b.arrays) for b in batches[:3]])
    assert len(set(ids)) == len(ids) == 3 * bs
    assert all(b.arrays[synth_store.HOOKS[0]].shape == (bs, synth_store.D_MODEL) for b in batches)


def test_bf16_store_is_fed_as_bf16(tmp_path):
    import ml_dtypes

    dest = str(tmp_path / "bf16")
    synth_store.write(dest, synth_store.keys(4), dtype="bfloat16")
    store = arclens.open_store(dest)
    src = StoreSource(store, synth_store.HOOKS, batch_tokens=16, seed=0, dtype="float32")
    b = next(src.host_batches())
    assert b.arrays[synth_store.HOOKS[0]].dtype == np.dtype(ml_dtypes.bfloat16)  # upcast exactly on the device
    assert Position().to_json() == {"epoch": 0, "window": 0, "batch": 0}


def test_without_shuffle_the_order_is_the_stored_order(store):
    src = StoreSource(store, synth_store.HOOKS, batch_tokens=64, seed=5, shuffle=False)
    ids = np.concatenate([_ids(b.arrays) for b in islice(src.host_batches(), store.n_tokens // 64)])
    stored = np.concatenate([a[synth_store.HOOKS[0]][:, 0] for _, a in store.samples()])
    np.testing.assert_array_equal(ids, stored[: len(ids)])

