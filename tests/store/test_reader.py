"""Reader guarantees: batches() once per epoch, duplicates, third-party readability."""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.support.synth_store import D_MODEL, HOOKS, expected, keys, sample, write

import arclens
from arclens.errors import UserError


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    dest = str(tmp_path_factory.mktemp("reader") / "store")
    # float32 so that every token row is unique and exactly comparable
    write(dest, keys(15), shard_bytes=2500, dtype="float32")
    return dest


def _all_rows(dest, hook):
    rows = [arrays[hook] for _, arrays in arclens.open_store(dest).samples(hooks=[hook])]
    return np.concatenate(rows)


def _as_set(x):
    return sorted(map(bytes, np.ascontiguousarray(x).view(np.uint8).reshape(x.shape[0], -1)))


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("batch_size,buffer_shards", [(64, 4), (7, 1), (1000, 2)])
def test_batches_yield_every_token_once(store_dir, shuffle, batch_size, buffer_shards):
    store = arclens.open_store(store_dir)
    assert len(store.shards) > 4
    batches = list(store.batches(HOOKS[0], batch_size=batch_size, shuffle=shuffle, seed=1,
                                 buffer_shards=buffer_shards))
    assert all(b.shape == (batch_size, D_MODEL) for b in batches[:-1])
    assert 0 < batches[-1].shape[0] <= batch_size
    got = np.concatenate(batches)
    ref = _all_rows(store_dir, HOOKS[0])
    assert got.shape[0] == store.n_tokens == ref.shape[0]
    assert _as_set(got) == _as_set(ref), "the same multiset of token rows, each exactly once"
    if not shuffle:
        np.testing.assert_array_equal(got, ref)
    else:
        assert not np.array_equal(got, ref)


def test_batches_deterministic_per_seed_and_drop_last(store_dir):
    store = arclens.open_store(store_dir)
    a = np.concatenate(list(store.batches(HOOKS[1], batch_size=50, seed=7)))
    b = np.concatenate(list(store.batches(HOOKS[1], batch_size=50, seed=7)))
    c = np.concatenate(list(store.batches(HOOKS[1], batch_size=50, seed=8)))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    dropped = list(store.batches(HOOKS[1], batch_size=50, seed=7, drop_last=True))
    assert all(x.shape[0] == 50 for x in dropped)
    assert len(dropped) == store.n_tokens // 50
    assert next(store.batches(HOOKS[1], batch_size=50, dtype=np.float16)).dtype == np.float16
    with pytest.raises(UserError, match="no hook"):
        next(store.batches("blocks.9.hook_resid_pre"))


def test_batches_are_plain_writable_arrays(store_dir):
    x = next(arclens.open_store(store_dir).batches(HOOKS[0], batch_size=8, shuffle=False))
    assert type(x) is np.ndarray and x.flags.writeable and x.flags.c_contiguous


def test_duplicate_keys_first_index_wins(tmp_path):
    dest = str(tmp_path / "s")
    write(dest, keys(3), writer="a")   # index/a-*.json: sorts first
    # a second attempt committed two of the same keys, plus a new one
    write(dest, keys(3)[:2] + ["extra/0/0"], writer="b")
    store = arclens.open_store(dest)
    seen = [m["key"] for m, _ in store.samples()]
    assert sorted(seen) == sorted(keys(3) + ["extra/0/0"])
    assert len(store.committed.duplicates) == 2
    owners = {owner for _, owner, _ in store.committed.duplicates}
    assert all(o.startswith("a-") for o in owners), "the first index file in name order owns the key"
    n_expected = sum(sample(k)[1]["token_id"].shape[0] for k in keys(3) + ["extra/0/0"])
    assert store.n_tokens == n_expected
    assert sum(b.shape[0] for b in store.batches(HOOKS[0], batch_size=16)) == n_expected
    for meta, arrays in store.samples():
        np.testing.assert_array_equal(arrays["token_id"], expected(meta["key"], "token_id"))


def test_third_party_read_with_safetensors_and_numpy_only(store_dir):
    """What SPEC.md section 3 promises, read without arclens."""
    from safetensors import safe_open

    meta = json.loads(Path(store_dir, "metadata.json").read_text())
    seen = {}
    for index_path in sorted(glob.glob(os.path.join(store_dir, "index", "*.json"))):
        index = json.loads(Path(index_path).read_text())
        shard = os.path.join(store_dir, index["shard"])
        with safe_open(shard, framework="numpy") as f:
            samples = json.loads(f.metadata()["samples"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
        assert [s["key"] for s in samples] == index["samples"]
        n = index["n_tokens"]
        assert set(tensors) == set(meta["hooks"]) | {"sample", "position", "token_id", "grid", "row", "col"}
        for h in meta["hooks"]:
            assert tensors[h].shape == (n, meta["d_model"])
        for row, s in enumerate(samples):
            mask = tensors["sample"] == row
            assert mask.sum() == s["stored_tokens"]
            np.testing.assert_array_equal(tensors[HOOKS[0]][mask], expected(s["key"], HOOKS[0], np.float32))
            np.testing.assert_array_equal(tensors["grid"][mask], expected(s["key"], "grid"))
            seen.setdefault(s["key"], index_path)
    assert sorted(seen) == sorted(keys(15))


def test_bf16_shard_readable_with_safetensors_numpy(tmp_path):
    from safetensors.numpy import load_file

    dest = str(tmp_path / "bf")
    write(dest, keys(1), shard_bytes=1 << 20)
    (shard,) = glob.glob(os.path.join(dest, "shards", "*.safetensors"))
    t = load_file(shard)
    assert t[HOOKS[0]].dtype == ml_dtypes.bfloat16
    n0 = sample(keys(1)[0])[1]["token_id"].shape[0]
    np.testing.assert_array_equal(t[HOOKS[0]][:n0], expected(keys(1)[0], HOOKS[0]))


def _tiny_store(root, sizes, shard_bytes):
    """A float32 store whose token rows encode (sample, position) so that equality is exact."""
    from arclens.store.writer import StoreWriter, open_or_create_store

    hook = "blocks.0.hook_resid_pre"
    open_or_create_store(root, {"hooks": [hook], "dtype": "float32", "d_model": 2})
    with StoreWriter(root, "p", shard_bytes=shard_bytes) as w:
        for i, n in enumerate(sizes):
            x = np.stack([np.full(n, i, np.float32), np.arange(n, dtype=np.float32)], axis=1)
            z = np.zeros(n, np.int16)
            w.add({"key": f"s{i}/0/0", "task_id": f"s{i}", "test_index": 0, "augmentation": {}, "prompt_tokens": n},
                  {hook: x, "position": np.arange(n, dtype=np.int32), "token_id": np.zeros(n, np.int32),
                   "grid": z, "row": z, "col": z})
    return hook


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(0, 30), min_size=1, max_size=25), shard_bytes=st.integers(1, 400),
       batch_size=st.integers(1, 70), buffer_shards=st.integers(1, 5), shuffle=st.booleans(),
       seed=st.integers(0, 3), drop_last=st.booleans())
def test_batches_property(tmp_path_factory, sizes, shard_bytes, batch_size, buffer_shards, shuffle, seed, drop_last):
    root = str(tmp_path_factory.mktemp("prop") / "s")
    hook = _tiny_store(root, sizes, shard_bytes)
    store = arclens.open_store(root)
    total = sum(sizes)
    assert store.n_tokens == total
    batches = list(store.batches(hook, batch_size=batch_size, shuffle=shuffle, seed=seed,
                                 buffer_shards=buffer_shards, drop_last=drop_last))
    assert all(b.shape == (batch_size, 2) for b in batches[: len(batches) - 1])
    got = np.concatenate(batches) if batches else np.zeros((0, 2), np.float32)
    want = {(i, p) for i, n in enumerate(sizes) for p in range(n)}
    rows = [tuple(map(int, r)) for r in got]
    assert len(rows) == len(set(rows)), "no token twice"
    if drop_last:
        assert len(rows) == (total // batch_size) * batch_size and set(rows) <= want
    else:
        assert set(rows) == want, "every token once"


def _reference_batches(store, hook, batch_size, shuffle, seed, buffer_shards):
    """The documented order, written the plain way: shard order permuted by ``seed``; each window
    of ``buffer_shards`` shards joined to the previous window's carry-over, permuted, sliced."""
    rng = np.random.default_rng(seed)
    views = list(store.shards)
    if shuffle:
        views = [views[i] for i in rng.permutation(len(views))]
    windows = [views[i:i + buffer_shards] for i in range(0, len(views), buffer_shards)] if shuffle \
        else [[v] for v in views]
    carry, out = np.zeros((0, store.d_model), store.dtype), []
    for window in windows:
        pool = np.concatenate([carry] + [v.visible(v.file.read([hook])[hook]) for v in window])
        if shuffle:
            pool = pool[rng.permutation(pool.shape[0])]
        full = (pool.shape[0] // batch_size) * batch_size
        out += [pool[i:i + batch_size] for i in range(0, full, batch_size)]
        carry = pool[full:]
    return out + ([carry] if carry.shape[0] else [])


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(0, 30), min_size=1, max_size=20), shard_bytes=st.integers(1, 300),
       batch_size=st.integers(1, 40), buffer_shards=st.integers(1, 4), shuffle=st.booleans(),
       seed=st.integers(0, 3), prefetch=st.integers(0, 2))
def test_batches_follow_the_documented_order(tmp_path_factory, sizes, shard_bytes, batch_size, buffer_shards,
                                             shuffle, seed, prefetch):
    root = str(tmp_path_factory.mktemp("order") / "s")
    hook = _tiny_store(root, sizes, shard_bytes)
    store = arclens.open_store(root, prefetch=prefetch)
    got = list(store.batches(hook, batch_size=batch_size, shuffle=shuffle, seed=seed, buffer_shards=buffer_shards))
    want = _reference_batches(store, hook, batch_size, shuffle, seed, buffer_shards)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
        assert g.flags.owndata and g.flags.writeable and g.flags.c_contiguous and not isinstance(g, np.memmap)


def test_background_batches_stop_with_their_consumer(store_dir):
    """The thread that makes batches ahead starts on the first next() and ends when the consumer
    stops early; an error in it reaches the consumer."""
    import threading
    import time

    def makers():
        return [t for t in threading.enumerate() if t.name == "arclens-batches"]

    store = arclens.open_store(store_dir, prefetch=1)
    unused = store.batches(HOOKS[0], batch_size=8)
    assert not makers(), "nothing runs before the first next()"
    it = store.batches(HOOKS[0], batch_size=8)
    first = next(it)
    assert first.shape == (8, D_MODEL) and makers()
    it.close()
    deadline = time.time() + 5
    while makers() and time.time() < deadline:
        time.sleep(0.02)
    assert not makers(), "closing the consumer stops the producer"
    del unused

    store = arclens.open_store(store_dir, prefetch=1)
    store.shards[-1].file.path += ".gone"  # the last shard disappears mid-epoch
    with pytest.raises(FileNotFoundError):
        for _ in store.batches(HOOKS[0], batch_size=8, shuffle=False):
            pass


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("prefetch", [0, 1])
def test_batches_of_several_hooks_hold_the_same_tokens(store_dir, shuffle, prefetch):
    """A transcoder needs (mlp input, mlp output) of one token, a crosscoder several layers: a list
    of hooks and columns gives dicts whose rows are the same tokens, in the order that one hook
    alone would get for that seed."""
    store = arclens.open_store(store_dir, prefetch=prefetch)
    names = [HOOKS[0], HOOKS[1], "sample", "position", "token_id"]
    batches = list(store.batches(names, batch_size=37, shuffle=shuffle, seed=5, buffer_shards=2))
    assert all(set(b) == set(names) for b in batches)
    assert all(b[n].shape[0] == b[HOOKS[0]].shape[0] for b in batches for n in names)
    assert batches[0][HOOKS[1]].shape == (37, D_MODEL) and batches[0]["position"].dtype == np.int32
    # the hooks come in the order one hook alone gets for this seed
    alone = list(store.batches(HOOKS[0], batch_size=37, shuffle=shuffle, seed=5, buffer_shards=2))
    np.testing.assert_array_equal(np.concatenate([b[HOOKS[0]] for b in batches]), np.concatenate(alone))
    # and every row of every name is one and the same token: the float32 rows of the first hook
    # are unique, so they identify the token; look the other names up from samples()
    rows_of = {}
    for _, arrays in store.samples():
        for i in range(arrays["position"].shape[0]):
            rows_of[arrays[HOOKS[0]][i].tobytes()] = {n: arrays[n][i] for n in names}
    assert len(rows_of) == store.n_tokens
    seen = set()
    for b in batches:
        for r in range(b[HOOKS[0]].shape[0]):
            token = b[HOOKS[0]][r].tobytes()
            assert token not in seen
            seen.add(token)
            for n in names:
                np.testing.assert_array_equal(b[n][r], rows_of[token][n])
    assert len(seen) == store.n_tokens


def test_batches_of_several_hooks_cast_hooks_only_and_refuse_bad_lists(store_dir):
    store = arclens.open_store(store_dir)
    b = next(iter(store.batches([HOOKS[0], "token_id"], batch_size=8, dtype=np.float16)))
    assert b[HOOKS[0]].dtype == np.float16 and b["token_id"].dtype == np.int32
    for bad in ([], [HOOKS[0], HOOKS[0]], ["token_id", "position"], [HOOKS[0], "blocks.9.hook_resid_pre"]):
        with pytest.raises(UserError):
            store.batches(bad)
