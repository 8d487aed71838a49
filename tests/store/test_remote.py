"""The store against real object-store servers on loopback, with and without injected faults."""

from __future__ import annotations

import numpy as np
import pytest
from tests.support.synth_store import HOOKS, expected, keys, sample, store_metadata, write

import arclens
from arclens.errors import StorageUnavailable
from arclens.store import fs as fsx
from arclens.store.writer import StoreWriter, committed_keys, open_or_create_store


def _assert_exactly(dest, opts, all_keys):
    store = arclens.open_store(dest, storage_options=opts)
    got = []
    for meta, arrays in store.samples():
        got.append(meta["key"])
        np.testing.assert_array_equal(arrays[HOOKS[0]], expected(meta["key"], HOOKS[0]))
        np.testing.assert_array_equal(arrays["token_id"], expected(meta["key"], "token_id"))
    assert sorted(got) == sorted(all_keys), "every sample exactly once"
    tokens = sum(b.shape[0] for b in store.batches(HOOKS[1], batch_size=17, seed=3))
    assert tokens == store.n_tokens == sum(sample(k)[1]["token_id"].shape[0] for k in all_keys)
    return store


@pytest.mark.parametrize("kind", ["s3", "gcs"])
def test_round_trip_on_emulator(kind, request):
    remote = request.getfixturevalue(f"{kind}_remote")
    dest, opts = remote.child("store"), remote.storage_options
    w = write(dest, keys(4), shard_bytes=3000, storage_options=opts)
    assert len(w.commits) > 1
    assert committed_keys(dest, opts) == set(keys(4))
    # resume: a second writer run adds the rest, never reusing a shard name
    w2 = write(dest, keys(6)[8:], shard_bytes=3000, storage_options=opts)
    assert not {c.shard for c in w.commits} & {c.shard for c in w2.commits}
    _assert_exactly(dest, opts, keys(6))


@pytest.mark.parametrize("kind", ["s3", "gcs"])
def test_cli_reaches_emulator_through_env(kind, request, monkeypatch, capsys):
    """No storage options at all: AWS_ENDPOINT_URL + credentials, or STORAGE_EMULATOR_HOST."""
    remote = request.getfixturevalue(f"{kind}_remote")
    dest = remote.child("env")
    write(dest, keys(2), storage_options=remote.storage_options)
    for k, v in remote.env.items():
        monkeypatch.setenv(k, v)
    from arclens.cli import main

    assert main(["verify", dest]) == 0
    assert "4 samples" in capsys.readouterr().out
    assert main(["inspect", dest]) == 0
    assert "blocks.0.hook_resid_post" in capsys.readouterr().out


# gcsfs backs off ~1-2 s per fault inside its own retry loop, so GCS gets the two cases that
# matter most (a refused upload, and a create that landed but whose answer was lost).
@pytest.mark.parametrize("kind,action", [("s3", "refuse"), ("s3", "drop"), ("s3", "lose_response"),
                                         ("gcs", "refuse"), ("gcs", "lose_response")])
def test_transient_faults_lose_nothing_and_double_nothing(kind, action, request, monkeypatch):
    from tests.support.servers import FaultProxy

    server = request.getfixturevalue("moto_server" if kind == "s3" else "fake_gcs_server")
    monkeypatch.setattr(fsx, "RETRY_BASE_S", 0.01)
    proxy = FaultProxy(server.endpoint)
    try:
        remote = server.new_bucket(endpoint=proxy.endpoint)
        dest, opts = remote.child(action), remote.storage_options
        upload = "PUT" if kind == "s3" else "POST"
        # Hit the first shard upload, the first index commit and (S3 only) metadata.json.
        proxy.add(upload, r"shards/", action)
        proxy.add(upload, r"index/", action)
        if kind == "s3":
            proxy.add(upload, r"metadata\.json", action)
        w = write(dest, keys(3), shard_bytes=3000, storage_options=opts)
        assert all(f.hits == 1 for f in proxy.faults), [(f.pattern, f.hits) for f in proxy.faults]
        proxy.clear()
        _assert_exactly(dest, opts, keys(3))
        fs, root = fsx.get_fs(dest, opts)
        assert fsx.list_names(fs, fsx.join(root, "index")) == sorted(c.index.split("/")[1] for c in w.commits)
    finally:
        proxy.stop()


def test_failed_upload_commits_nothing_then_resume_completes(moto_server, monkeypatch):
    """The server refuses every shard upload: flush fails, no index file appears; a resumed run
    writes the samples exactly once."""
    from tests.support.servers import FaultProxy

    monkeypatch.setattr(fsx, "RETRY_BASE_S", 0.01)
    monkeypatch.setattr(fsx, "RETRY_ATTEMPTS", 2)
    proxy = FaultProxy(moto_server.endpoint)
    try:
        remote = moto_server.new_bucket(endpoint=proxy.endpoint)
        opts = dict(remote.storage_options, config_kwargs={"retries": {"max_attempts": 1}})
        dest = remote.child("failing")
        open_or_create_store(dest, store_metadata(), storage_options=opts)
        w = StoreWriter(dest, "w0", shard_bytes=1 << 20, storage_options=opts)
        for k in keys(2):
            w.add(*sample(k))
        proxy.add("PUT", r"shards/", "refuse", times=1000)
        with pytest.raises(StorageUnavailable, match=r"still failing after 2 attempts"):
            w.flush()  # an OSError too, for callers that handle I/O failures
        assert any(action == "refuse" for _, _, action in proxy.log)
        assert committed_keys(dest, opts) == set()
        assert arclens.open_store(dest, storage_options=opts).n_tokens == 0
        proxy.clear()
        # The failed writer's buffer is intact: a retried flush commits it once ...
        w.flush()
        # ... and a resumed run skips exactly what is committed.
        done = committed_keys(dest, opts)
        assert done == set(keys(2))
        w2 = StoreWriter(dest, "w0", shard_bytes=1 << 20, storage_options=opts)
        for k in keys(4):
            if k not in done:
                w2.add(*sample(k))
        w2.close()
        _assert_exactly(dest, opts, keys(4))
    finally:
        proxy.stop()


@pytest.mark.parametrize("kind", ["s3", "gcs"])
def test_missing_bucket_is_a_user_error(kind, request):
    from arclens.errors import UserError

    remote = request.getfixturevalue(f"{kind}_remote")
    dest = remote.url.replace("arclens-", "missing-")
    with pytest.raises(UserError, match="cannot create the store"):
        open_or_create_store(dest, store_metadata(), storage_options=remote.storage_options)
    assert committed_keys(dest, remote.storage_options) == set()


@pytest.mark.parametrize("kind", ["s3", "gcs"])
def test_large_shard_goes_through_multipart_upload(kind, request, monkeypatch):
    """A shard uploaded in parts (S3 multipart, GCS resumable) is still published whole."""
    monkeypatch.setattr(fsx, "UPLOAD_CHUNK_BYTES", 8 << 20)
    remote = request.getfixturevalue(f"{kind}_remote")
    dest, opts = remote.child("large"), remote.storage_options
    hook, d, n = "blocks.0.hook_resid_post", 1024, 1024
    open_or_create_store(dest, store_metadata(hooks=[hook], d_model=d, dtype="float32"), storage_options=opts)
    rng = np.random.default_rng(0)
    cols = {"position": np.arange(n, dtype=np.int32), "token_id": np.arange(n, dtype=np.int32),
            "grid": np.full(n, -1, np.int16), "row": np.full(n, -1, np.int16), "col": np.full(n, -1, np.int16)}
    first = rng.standard_normal((n, d)).astype(np.float32)
    with StoreWriter(dest, "big", shard_bytes=1 << 30, storage_options=opts) as w:
        for i in range(6):
            x = first if i == 0 else np.full((n, d), i, np.float32)
            w.add({"key": f"t{i}/0/0", "task_id": f"t{i}", "test_index": 0, "augmentation": {},
                   "prompt_tokens": n}, {hook: x, **cols})
    (commit,) = w.commits
    assert commit.bytes > 24 << 20
    if kind == "s3":
        fs, root = fsx.get_fs(dest, opts)
        etag = fs.info(fsx.join(root, commit.shard))["ETag"]
        assert "-" in etag, f"not a multipart upload: ETag {etag}"
    from arclens.store.verify import verify_store

    report = verify_store(dest, opts)
    assert report.ok, report.problems
    store = arclens.open_store(dest, storage_options=opts)
    meta, arrays = next(store.samples())
    assert meta["key"] == "t0/0/0"
    np.testing.assert_array_equal(arrays[hook], first)
