"""Writer -> reader round trips on local disk and memory://, and resume semantics."""

from __future__ import annotations

import json
import os
import uuid

import numpy as np
import pytest
from tests.support.synth_store import HOOKS, expected, keys, sample, store_metadata, write

import arclens
from arclens.errors import UserError
from arclens.store.writer import StoreWriter, committed_keys, open_or_create_store


def _check_store(dest, all_keys, storage_options=None):
    store = arclens.open_store(dest, storage_options=storage_options)
    seen = []
    for meta, arrays in store.samples():
        seen.append(meta["key"])
        assert meta["stored_tokens"] == arrays["token_id"].shape[0]
        for name in HOOKS + ["position", "token_id", "grid", "row", "col"]:
            np.testing.assert_array_equal(arrays[name], expected(meta["key"], name))
    assert sorted(seen) == sorted(all_keys)
    assert store.n_tokens == sum(sample(k)[1]["token_id"].shape[0] for k in all_keys)
    return store


@pytest.fixture(params=["local", "memory"])
def dest(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "store")
    return f"memory://arclens-test-{uuid.uuid4().hex}/store"


def test_round_trip(dest):
    all_keys = keys(12)
    w = write(dest, all_keys, shard_bytes=3000)
    assert len(w.commits) > 2, "small shard_bytes must rotate"
    assert committed_keys(dest) == set(all_keys)
    store = _check_store(dest, all_keys)
    assert store.hooks == HOOKS
    assert store.metadata["format"] == "arclens-activations" and store.metadata["version"] == 1


def test_float32_store_keeps_exact_values(tmp_path):
    dest = str(tmp_path / "f32")
    write(dest, keys(3), dtype="float32")
    store = arclens.open_store(dest)
    for meta, arrays in store.samples(hooks=[HOOKS[1]]):
        assert set(arrays) == {HOOKS[1], "sample", "position", "token_id", "grid", "row", "col"}
        np.testing.assert_array_equal(arrays[HOOKS[1]], expected(meta["key"], HOOKS[1], np.float32))


def test_resume_appends_new_shards_and_never_reuses_names(dest):
    first, second = keys(4), keys(8)[8:]
    write(dest, first)
    done = committed_keys(dest)
    w = write(dest, [k for k in second if k not in done])
    assert all(c.shard.startswith("shards/w0-") for c in w.commits)
    _check_store(dest, first + second)


def test_metadata_mismatch_is_refused_naming_the_fields(tmp_path):
    dest = str(tmp_path / "s")
    open_or_create_store(dest, store_metadata())
    # created_at / arclens_version may differ on resume
    open_or_create_store(dest, store_metadata(created_at="later", arclens_version="9.9"))
    with pytest.raises(UserError) as err:
        open_or_create_store(dest, store_metadata(dtype="float32", positions="last"))
    assert "dtype" in str(err.value) and "positions" in str(err.value)
    with pytest.raises(UserError, match=r"prompt\.seed"):
        meta = store_metadata()
        meta["prompt"]["seed"] = 1
        open_or_create_store(dest, meta)


def test_crash_leftover_shard_is_invisible_and_not_reused(tmp_path):
    dest = str(tmp_path / "s")
    write(dest, keys(2))
    # A crash between the shard write and its index file leaves a shard nobody committed.
    leftover = tmp_path / "s" / "shards" / "w0-000007.safetensors"
    leftover.write_bytes(b"partial garbage")
    (tmp_path / "s" / "shards" / ".w0-000008.safetensors.tmp-x").write_bytes(b"temp")
    store = arclens.open_store(dest)
    assert all(v.entry.shard != "shards/w0-000007.safetensors" for v in store.shards)
    w = write(dest, keys(3)[4:])
    assert w.commits[0].shard == "shards/w0-000008.safetensors"
    assert leftover.read_bytes() == b"partial garbage"
    _check_store(dest, keys(3))


def test_index_file_is_the_commit(tmp_path):
    dest = str(tmp_path / "s")
    w = write(dest, keys(2), shard_bytes=1 << 20)
    (commit,) = w.commits
    index = json.loads((tmp_path / "s" / commit.index).read_text())
    shard = tmp_path / "s" / index["shard"]
    assert index["bytes"] == os.path.getsize(shard)
    import hashlib

    assert index["sha256"] == hashlib.sha256(shard.read_bytes()).hexdigest()
    assert index["samples"] == keys(2)
    os.unlink(tmp_path / "s" / commit.index)
    assert committed_keys(dest) == set()
    assert arclens.open_store(dest).n_tokens == 0


def test_writer_validates_input(tmp_path):
    dest = str(tmp_path / "s")
    open_or_create_store(dest, store_metadata())
    w = StoreWriter(dest, "w0", shard_bytes=1 << 20)
    meta, arrays = sample("a/0/0")
    bad = dict(arrays)
    bad[HOOKS[0]] = bad[HOOKS[0]][:, :3]
    with pytest.raises(ValueError, match="shape"):
        w.add(meta, bad)
    with pytest.raises(ValueError, match="missing"):
        w.add(meta, {k: v for k, v in arrays.items() if k != "row"})
    w.add(meta, arrays)
    with pytest.raises(ValueError, match="already added"):
        w.add(meta, arrays)
    with pytest.raises(UserError, match="disagrees"):
        StoreWriter(dest, "w1", hooks=["blocks.5.hook_resid_post"])
    with pytest.raises(ValueError, match="writer name"):
        StoreWriter(dest, "a/b")


def test_writer_without_store_needs_settings(tmp_path):
    with pytest.raises(UserError, match="no metadata.json"):
        StoreWriter(str(tmp_path / "none"), "w0")
    with pytest.raises(UserError, match="not an activation store"):
        arclens.open_store(str(tmp_path / "none"))
    assert committed_keys(str(tmp_path / "none")) == set()


def test_unwritable_dest_is_a_user_error(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for dest in (str(a_file), str(a_file / "sub")):
        with pytest.raises(UserError, match="cannot create the store"):
            open_or_create_store(dest, store_metadata())
    with pytest.raises(UserError, match="hooks"):
        open_or_create_store(str(tmp_path / "s"), store_metadata(hooks=[]))
    assert not (tmp_path / "s" / "metadata.json").exists()


def test_same_writer_name_twice_never_overwrites_a_commit(tmp_path):
    """Two processes mistakenly sharing a writer name: the second one skips taken seqs instead of
    overwriting the first one's committed shard."""
    dest = str(tmp_path / "s")
    open_or_create_store(dest, store_metadata())
    a = StoreWriter(dest, "same", shard_bytes=1 << 20)
    b = StoreWriter(dest, "same", shard_bytes=1 << 20)  # listed the same (empty) store
    a.add(*sample("a/0/0"))
    b.add(*sample("b/0/0"))
    ca, cb = a.flush(), b.flush()
    assert ca.shard != cb.shard
    _check_store(dest, ["a/0/0", "b/0/0"])


def test_concurrent_writers_threads(tmp_path):
    import threading

    dest = str(tmp_path / "s")
    open_or_create_store(dest, store_metadata())
    all_keys = keys(10)

    def run(name, part):
        with StoreWriter(dest, name, shard_bytes=2000) as w:
            for k in part:
                w.add(*sample(k))

    threads = [threading.Thread(target=run, args=(f"w{i}", all_keys[i::3])) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _check_store(dest, all_keys)


def test_empty_store_reads_and_commands(tmp_path, capsys):
    from arclens.cli import main

    dest = str(tmp_path / "s")
    open_or_create_store(dest, store_metadata())
    store = arclens.open_store(dest)
    assert store.n_tokens == 0 and list(store.samples()) == [] and list(store.batches(HOOKS[0])) == []
    assert main(["verify", dest]) == 0
    assert main(["inspect", dest]) == 0
    assert "0 per hook" in capsys.readouterr().out
