"""Create-only and whole-object semantics of arclens.store.fs on every backend, real servers
included (moto for S3, fake-gcs-server for GCS)."""

from __future__ import annotations

import threading
import uuid

import pytest

from arclens.store import fs as fsx


@pytest.fixture(params=["local", "memory", "s3", "gcs"])
def backend(request, tmp_path):
    """(url, storage_options) of an empty folder on each backend."""
    if request.param == "local":
        return str(tmp_path / "root"), None
    if request.param == "memory":
        return f"memory://fs-test-{uuid.uuid4().hex}", None
    remote = request.getfixturevalue("s3_remote" if request.param == "s3" else "gcs_remote")
    return remote.url, remote.storage_options


def test_create_only_semantics(backend):
    url, opts = backend
    fs, root = fsx.get_fs(url, opts)
    path = fsx.join(root, "index", "a.json")
    fsx.create_only(fs, path, b'{"owner": "me"}')
    with pytest.raises(FileExistsError):
        fsx.create_only(fs, path, b'{"owner": "someone else"}')
    # Our own bytes again (what a retried create whose response was lost meets): accepted.
    fsx.create_only(fs, path, b'{"owner": "me"}')
    assert fsx.read_bytes(fs, path) == b'{"owner": "me"}'
    assert fsx.list_names(fs, fsx.join(root, "index")) == ["a.json"]


def test_write_whole_and_listing(backend, tmp_path):
    url, opts = backend
    fs, root = fsx.get_fs(url, opts)
    assert fsx.list_names(fs, fsx.join(root, "missing")) == []
    fsx.write_whole(fs, fsx.join(root, "d", "x.bin"), b"one")
    fsx.write_whole(fs, fsx.join(root, "d", "x.bin"), b"two")  # overwrites
    spool = tmp_path / "spool.bin"
    spool.write_bytes(b"from a file" * 1000)
    fsx.write_whole(fs, fsx.join(root, "d", "y.bin"), local_file=str(spool))
    assert fsx.read_bytes(fs, fsx.join(root, "d", "x.bin")) == b"two"
    assert fsx.read_bytes(fs, fsx.join(root, "d", "y.bin")) == spool.read_bytes()
    assert fsx.list_names(fs, fsx.join(root, "d")) == ["x.bin", "y.bin"]
    assert spool.exists(), "the caller's file is not consumed"


def test_local_create_only_race_has_one_winner(tmp_path):
    fs, root = fsx.get_fs(str(tmp_path))
    path = fsx.join(root, "claim.json")
    winners, losers = [], []

    def claim(i):
        try:
            fsx.create_only(fs, path, f"owner {i}".encode())
            winners.append(i)
        except FileExistsError:
            losers.append(i)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and len(losers) == 15
    assert (tmp_path / "claim.json").read_bytes() == f"owner {winners[0]}".encode()
    assert [p.name for p in tmp_path.iterdir()] == ["claim.json"], "no temp files left behind"


def test_transient_errors_are_classified():
    assert fsx.is_transient(ConnectionResetError())
    assert fsx.is_transient(TimeoutError())
    assert fsx.is_transient(OSError(5, "503 SlowDown"))
    # what s3fs makes of S3's throttling and 5xx answers: an errno and the server's message only
    import errno

    from botocore.exceptions import ClientError
    from s3fs.errors import translate_boto_error

    for code in ("SlowDown", "ServiceUnavailable", "InternalError"):
        boto = ClientError({"Error": {"Code": code, "Message": "please retry"}}, "PutObject")
        assert fsx.is_transient(translate_boto_error(boto)), code
    assert fsx.is_transient(OSError(errno.EBUSY, "please retry"))
    assert not fsx.is_transient(OSError(errno.EACCES, "Access Denied"))
    assert not fsx.is_transient(FileExistsError())
    assert not fsx.is_transient(PermissionError())
    assert not fsx.is_transient(ValueError("x"))

    class HttpError(Exception):
        code = 503

    assert fsx.is_transient(HttpError())


def test_with_retries_retries_transient_only(monkeypatch):
    monkeypatch.setattr(fsx, "RETRY_BASE_S", 0.001)
    calls = []

    def flaky(attempt):
        calls.append(attempt)
        if attempt < 2:
            raise ConnectionResetError("reset")
        return "ok"

    assert fsx.with_retries("flaky", flaky) == "ok" and calls == [0, 1, 2]
    with pytest.raises(FileExistsError):
        fsx.with_retries("definite", lambda a: calls.append(a) or (_ for _ in ()).throw(FileExistsError()))
    # a transient error that outlasts the retries becomes StorageUnavailable, still an OSError
    from arclens.errors import StorageUnavailable

    with pytest.raises(StorageUnavailable, match=r"^put x: still failing after 3 attempts \(ConnectionResetError"):
        fsx.with_retries("put x", lambda a: (_ for _ in ()).throw(ConnectionResetError("reset")), attempts=3)


def test_storage_options_from_env(monkeypatch):
    from arclens.deployment import ENV_STORAGE_OPTIONS

    monkeypatch.setenv(ENV_STORAGE_OPTIONS, '{"anon": true}')
    assert fsx.storage_options_for("s3://b/x", {"key": "k"}) == {"anon": True, "key": "k"}
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:1")
    assert fsx.storage_options_for("gs://b/x")["token"] == "anon"
    monkeypatch.setenv(ENV_STORAGE_OPTIONS, "not json")
    from arclens.errors import UserError

    with pytest.raises(UserError, match=ENV_STORAGE_OPTIONS):
        fsx.storage_options_for("s3://b/x")


def test_local_create_only_without_hard_links(tmp_path, monkeypatch):
    import errno
    import os

    def no_links(src, dst):
        raise OSError(errno.EPERM, "hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    fs, root = fsx.get_fs(str(tmp_path))
    fsx.create_only(fs, fsx.join(root, "m.json"), b"mine")
    with pytest.raises(FileExistsError):
        fsx.create_only(fs, fsx.join(root, "m.json"), b"theirs")
    assert (tmp_path / "m.json").read_bytes() == b"mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


@pytest.mark.parametrize("kind", ["s3", "gcs"])
def test_listing_sees_other_processes_writes(kind, request):
    """s3fs and gcsfs cache listings per instance; list_names must not serve a stale one."""
    remote = request.getfixturevalue(f"{kind}_remote")
    fs_a, root = fsx.get_fs(remote.url, dict(remote.storage_options, skip_instance_cache=True))
    fs_b, _ = fsx.get_fs(remote.url, dict(remote.storage_options, skip_instance_cache=True))
    assert fs_a is not fs_b
    fsx.create_only(fs_a, fsx.join(root, "index", "a.json"), b"a")
    assert fsx.list_names(fs_a, fsx.join(root, "index")) == ["a.json"]  # now cached in fs_a
    fsx.create_only(fs_b, fsx.join(root, "index", "b.json"), b"b")  # "another process"
    assert fsx.list_names(fs_a, fsx.join(root, "index")) == ["a.json", "b.json"]
    assert fsx.exists(fs_a, fsx.join(root, "index", "b.json"))
