"""Two live processes under one writer name must never break each other's commits.

Before the fix, two `arclens extract` runs started at once on one host into one store (both named
`{host}-p0`) claimed the same shard numbers, and the later `os.replace` overwrote the earlier
process's shard under its already-committed index: `arclens verify` found shards whose sample
keys differed from their index. Now the default writer name carries the pid, and a shard is
published only where no object exists: a hard link locally, a create-only upload remotely."""

from __future__ import annotations

import os

import pytest
from tests.support.synth_store import keys, sample, store_metadata

import arclens
from arclens.errors import RunFailed
from arclens.store import fs as fsx
from arclens.store.writer import StoreWriter, committed_keys, open_or_create_store


@pytest.mark.parametrize("kind", ["local", "s3", "gcs"])
def test_a_shard_is_never_published_over_another(kind, tmp_path, request):
    if kind == "local":
        dest, opts = str(tmp_path / "store"), None
    else:  # moto's S3 server and fake-gcs-server: If-None-Match / ifGenerationMatch=0 uploads
        remote = request.getfixturevalue(f"{kind}_remote")
        dest, opts = remote.url, remote.storage_options
    open_or_create_store(dest, store_metadata(), storage_options=opts)
    a = StoreWriter(dest, "same", shard_bytes=1 << 20, publish_threads=0, storage_options=opts)
    b = StoreWriter(dest, "same", shard_bytes=1 << 20, publish_threads=0, storage_options=opts)
    for k in keys(2)[:2]:
        a.add(*sample(k))
    for k in keys(2)[2:]:
        b.add(*sample(k))
    # Both claimed shard 000000 before either published: the interleaving of two processes.
    stem_a, stem_b = a._claim_stem(), b._claim_stem()
    assert stem_a == stem_b
    a._next_seq = b._next_seq = 0
    a.flush()
    fs, root = fsx.get_fs(dest, opts)
    shard = fsx.join(root, "shards", f"{stem_a}.safetensors")
    before = fsx.read_bytes(fs, shard)
    b._next_seq = 0
    b._claim_stem = lambda: stem_b  # b goes on with the stem it claimed
    with pytest.raises(RunFailed, match=r"another live process writes into this store under the writer name 'same'"):
        b.flush()
    assert fsx.read_bytes(fs, shard) == before, "a's committed shard is untouched"
    assert committed_keys(dest, opts) == set(keys(2)[:2])
    assert arclens.open_store(dest, storage_options=opts).n_tokens > 0
    if kind == "local":
        assert not [n for n in os.listdir(tmp_path / "store" / "shards") if n.startswith(".")]


def test_link_exclusive(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(b"new")
    dst.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        fsx.link_exclusive(str(src), str(dst))
    assert dst.read_bytes() == b"old"
    dst.unlink()
    fsx.link_exclusive(str(src), str(dst))
    assert dst.read_bytes() == b"new"
