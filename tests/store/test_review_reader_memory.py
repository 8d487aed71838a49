"""Review: the shuffled reader's memory is about one window (``buffer_shards`` shards) when the
store is read in the caller's thread, not the previous window and the next one together."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import arclens
from arclens.store.writer import StoreWriter, open_or_create_store

HOOK = "blocks.0.hook_resid_pre"
D = 128


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("mem") / "s")
    open_or_create_store(root, {"hooks": [HOOK], "dtype": "float32", "d_model": D})
    rng = np.random.default_rng(0)
    with StoreWriter(root, "p", shard_bytes=1 << 20) as w:
        for i in range(24):
            n = 500
            z = np.zeros(n, np.int16)
            w.add({"key": f"s{i}/0/0", "task_id": f"s{i}", "test_index": 0, "augmentation": {}, "prompt_tokens": n},
                  {HOOK: rng.random((n, D), np.float32), "position": np.arange(n, dtype=np.int32),
                   "token_id": np.zeros(n, np.int32), "grid": z, "row": z, "col": z})
    return root


@pytest.mark.parametrize("prefetch,windows", [(0, 1.5), (1, 2.5)])
def test_shuffled_batches_hold_one_window_plus_the_prefetched_one(store_dir, prefetch, windows):
    """numpy reports its buffers to tracemalloc (memory maps are not counted). Without prefetch
    the window just cut must be freed before the next one is read: at most ~1 window at a time;
    with prefetch the next window is read while the current one is cut: ~2."""
    store = arclens.open_store(store_dir, prefetch=prefetch)
    assert len(store.shards) >= 8
    buffer_shards = 3
    window = max(sum(v.n_tokens for v in store.shards[i:i + buffer_shards])
                 for i in range(0, len(store.shards), buffer_shards)) * D * 4
    tracemalloc.start()
    try:
        n = sum(b.shape[0] for b in store.batches(HOOK, batch_size=64, buffer_shards=buffer_shards, seed=3))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == store.n_tokens
    assert peak < windows * window, f"peak {peak / window:.2f} windows"
