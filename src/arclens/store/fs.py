"""fsspec helpers with the semantics the store's commit protocol needs (SPEC.md section 3).

Two primitives carry the whole protocol:

- ``write_whole``: an object appears whole or not at all (local: temp file in the same folder
  plus ``os.replace``; object stores: one PUT or one multipart/resumable upload, which the server
  only publishes when complete).
- ``create_only``: create an object if and only if it does not exist (local: ``os.link`` of a
  complete temp file, which fails atomically with EEXIST; gcsfs/s3fs: ``pipe_file(mode="create")``
  which sends ``ifGenerationMatch=0`` / ``If-None-Match: *``; memory://: check-and-set under a
  process-wide lock, which is exactly as atomic as that in-process filesystem can be).

Uploads retry transient failures with exponential backoff. A retried create whose first attempt
actually landed (the response was lost) comes back as FileExistsError for our own write, so after
a failed attempt we read the object back and accept it when its bytes are exactly ours.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from arclens.data.atomic import fsync_dir, replace_atomically, temp_file_beside, temp_path_beside
from arclens.errors import StorageUnavailable, UserError

log = logging.getLogger(__name__)
T = TypeVar("T")

# Part size of multipart (S3) / resumable (GCS) uploads of spooled shards; None: the library's
# default (50 MiB parts; s3fs then uses one PUT below 100 MiB, gcsfs one request below 5 MiB).
UPLOAD_CHUNK_BYTES: int | None = None

RETRY_ATTEMPTS = 6
RETRY_BASE_S = 0.2
RETRY_MAX_S = 10.0

_memory_lock = threading.Lock()


def is_local(fs) -> bool:
    return "file" in _protocols(fs)


def _protocols(fs) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)


def storage_options_for(url: str, extra: dict | None = None) -> dict:
    """Storage options for ``url``: ``ARCLENS_STORAGE_OPTIONS`` (a JSON object for every URL, e.g.
    ``{"endpoint_url": ...}``; deployment.py), then ``extra`` (wins). s3fs (through botocore) also
    honours AWS_ENDPOINT_URL and gcsfs STORAGE_EMULATOR_HOST, so the CLI runs unchanged against
    loopback emulators."""
    from arclens.deployment import storage_options

    opts: dict[str, Any] = dict(storage_options())
    opts.update(extra or {})
    # An emulator takes no credentials; without this gcsfs probes a metadata server first.
    if url.startswith(("gs://", "gcs://")) and os.environ.get("STORAGE_EMULATOR_HOST") and "token" not in opts:
        opts["token"] = "anon"
    return opts


def get_fs(url: str, storage_options: dict | None = None):
    """``(filesystem, root path without protocol)`` for a local path or fsspec URL."""
    if url.startswith(("gs://", "gcs://")):
        # Without this, gcsfs waits ~60 s per call on a gRPC bucket-type lookup (NOTES.md).
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    from fsspec.core import url_to_fs

    opts = storage_options_for(url, storage_options)
    try:
        fs, root = url_to_fs(url, **opts)
    except (ImportError, ValueError) as err:
        raise UserError(f"{url}: cannot open this location ({err})") from None
    if is_local(fs):
        root = os.path.abspath(root)
    return fs, root.rstrip("/")


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


# ---------------------------------------------------------------------------------------------
# retries

_TRANSIENT_NAMES = {
    # aiohttp / botocore / google-auth exception classes, matched by name so that importing this
    # module needs none of them.
    "ClientError", "ClientOSError", "ServerDisconnectedError", "ClientConnectionError",
    "ClientPayloadError", "ServerTimeoutError", "EndpointConnectionError", "ConnectionClosedError",
    "ReadTimeoutError", "ConnectTimeoutError", "ResponseStreamingError", "TransportError",
    "IncompleteReadError", "RemoteDisconnected",
}
_TRANSIENT_ERRNOS = {errno.EBUSY, errno.EREMOTEIO, errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET,
                     errno.ECONNABORTED, errno.ECONNREFUSED}
_PERMANENT_OS = (FileExistsError, FileNotFoundError, PermissionError, IsADirectoryError,
                 NotADirectoryError)


def is_transient(err: BaseException) -> bool:
    """Worth retrying: network trouble and server-side 5xx/429, never a definite answer."""
    if isinstance(err, _PERMANENT_OS):
        return False
    code = getattr(err, "code", None)
    if isinstance(code, int) and code in (408, 429) or isinstance(code, int) and code >= 500:
        return True
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    if any(cls.__name__ in _TRANSIENT_NAMES for cls in type(err).__mro__):
        return True
    # s3fs translates botocore errors into OSError(errno, message), keeping only the message: it
    # maps 503 ServiceUnavailable / SlowDown (throttling, common with many writers on one bucket)
    # and OperationAborted / 409 conflicts to EBUSY, and 500 InternalError to EREMOTEIO.
    if isinstance(err, OSError) and err.errno in _TRANSIENT_ERRNOS:
        return True
    if isinstance(err, OSError):
        text = str(err)
        return any(s in text for s in ("500", "502", "503", "504", "SlowDown", "InternalError",
                                        "ServiceUnavailable", "timed out", "Connection"))
    return False


def with_retries(what: str, call: Callable[[int], T], attempts: int | None = None) -> T:
    """Run ``call(attempt)`` until it succeeds, retrying transient errors with jittered backoff
    (``attempts`` in all, default ``RETRY_ATTEMPTS`` read at call time)."""
    attempts = RETRY_ATTEMPTS if attempts is None else attempts
    for attempt in range(attempts):
        try:
            return call(attempt)
        except Exception as err:
            if not is_transient(err):
                raise
            if attempt + 1 >= attempts:
                raise StorageUnavailable(
                    f"{what}: still failing after {attempts} attempts ({type(err).__name__}: {err})") from err
            delay = min(RETRY_MAX_S, RETRY_BASE_S * 2**attempt) * (0.5 + random.random())
            log.warning("%s failed (%s: %s); retry %d/%d in %.1fs", what, type(err).__name__, err,
                        attempt + 1, attempts - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------
# writing


def create_only(fs, path: str, data: bytes, *, just_before: Callable[[], None] | None = None) -> None:
    """Create ``path`` holding ``data``, appearing whole; FileExistsError if ``path`` already
    holds *other* bytes.

    Idempotent for identical bytes, on purpose: a create whose response was lost is retried (by
    us, and inside botocore/gcsfs, where we cannot see it) and then meets our own object. Every
    object we create-only carries content unique to its writer (a shard's sha256, a timestamp,
    an owner token), so "exists with exactly these bytes" means "ours".

    ``just_before()`` runs as late as possible before the object can appear (locally: after the
    bytes are on disk, right before the link), so a check it makes (a commit guard) has as short
    a window as the backend allows; it raises to cancel the create."""
    try:
        _create_only_once(fs, path, data, just_before)
    except FileExistsError:
        if _read_back_equals(fs, path, data):
            log.info("%s: already holds exactly these bytes (an earlier attempt landed)", path)
            return
        raise


def _create_only_once(fs, path: str, data: bytes, just_before) -> None:
    just_before = just_before or (lambda: None)
    if is_local(fs):
        with temp_file_beside(path) as (f, tmp):
            f.write(data)
        try:
            just_before()
            os.link(tmp, path)  # atomic, fails with EEXIST; the file is already complete
        except FileExistsError:
            raise
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            # A filesystem without hard links: O_EXCL still gives exactly one creator, though a
            # reader could then see the file before its bytes are all written.
            with open(path, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        finally:
            os.unlink(tmp)
        fsync_dir(os.path.dirname(path))
        return
    if "memory" in _protocols(fs):
        with _memory_lock:
            if fs.exists(path):
                raise FileExistsError(path)
            just_before()
            fs.pipe_file(path, data)
        return

    def attempt(_i: int) -> None:
        just_before()
        try:
            fs.pipe_file(path, data, mode="create")
        finally:
            _invalidate(fs, path)

    with_retries(f"create {path}", attempt)


def _read_back_equals(fs, path: str, data: bytes) -> bool:
    try:
        return read_bytes(fs, path) == data
    except FileNotFoundError:
        return False


def write_whole(fs, path: str, data: bytes | None = None, *, local_file: str | None = None) -> None:
    """Write ``data`` (or upload the local file ``local_file``) to ``path``, appearing whole.

    Overwrites: for objects only their own writer ever names. Shards are published with
    ``link_exclusive`` / ``upload_exclusive`` instead, which never overwrite."""
    if (data is None) == (local_file is None):
        raise TypeError("write_whole needs exactly one of data or local_file")
    if is_local(fs):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if local_file is None:
            replace_atomically(path, data)
            return
        tmp = temp_path_beside(path)
        try:
            try:
                os.link(local_file, tmp)  # same filesystem: no copy at all
            except OSError:
                import shutil

                shutil.copyfile(local_file, tmp)
            os.replace(tmp, path)
        except BaseException:
            _silent_unlink(tmp)
            raise
        fsync_dir(os.path.dirname(path))
        return

    def attempt(_i: int) -> None:
        try:
            if local_file is not None:
                chunk = {"chunksize": UPLOAD_CHUNK_BYTES} if UPLOAD_CHUNK_BYTES and _is_cloud(fs) else {}
                fs.put_file(local_file, path, **chunk)
            else:
                fs.pipe_file(path, data)
        finally:
            _invalidate(fs, path)

    with_retries(f"upload {path}", attempt)


def upload_exclusive(fs, local_file: str, path: str) -> None:
    """Upload ``local_file`` to the remote ``path`` unless an object is there already
    (FileExistsError), appearing whole: S3's If-None-Match and GCS's ifGenerationMatch=0, through
    fsspec's ``mode="create"``, on the single PUT and on a multipart completion alike.

    An upload whose answer was lost and that was retried (by us or inside botocore/gcsfs) meets
    its own object: an object of the same size whose first MiB, the shard's header with its
    sample keys, equals ours is taken as ours."""
    if "memory" in _protocols(fs):  # fsspec's in-memory filesystem has no create mode
        with _memory_lock:
            if fs.exists(path):
                raise FileExistsError(path)
            fs.put_file(local_file, path)
        return

    def attempt(_i: int) -> None:
        try:
            chunk = {"chunksize": UPLOAD_CHUNK_BYTES} if UPLOAD_CHUNK_BYTES and _is_cloud(fs) else {}
            fs.put_file(local_file, path, mode="create", **chunk)
        finally:
            _invalidate(fs, path)

    try:
        with_retries(f"upload {path}", attempt)
    except FileExistsError:
        if not _remote_is_this_file(fs, path, local_file):
            raise
        log.info("%s: already holds this shard (an earlier attempt landed)", path)


def _remote_is_this_file(fs, path: str, local_file: str, prefix: int = 1 << 20) -> bool:
    size = os.path.getsize(local_file)
    try:
        if with_retries(f"stat {path}", lambda _i: fs.size(path)) != size:
            return False
        with open(local_file, "rb") as f:
            head = f.read(prefix)
        return with_retries(f"read {path}", lambda _i: fs.cat_file(path, start=0, end=len(head))) == head
    except FileNotFoundError:
        return False


def link_exclusive(src: str, dst: str) -> None:
    """Give the complete local file ``src`` the name ``dst`` too, atomically, unless ``dst``
    exists (FileExistsError). Without hard links, an O_EXCL-free check then a rename: exclusive
    except against a rename in the same instant, which is as good as such a filesystem allows."""
    try:
        os.link(src, dst)
        return
    except FileExistsError:
        raise
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
    if os.path.lexists(dst):
        raise FileExistsError(dst)
    os.replace(src, dst)


def _silent_unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _invalidate(fs, path: str) -> None:
    try:
        fs.invalidate_cache(path)
    except Exception:  # noqa: BLE001, S110 - a failed cache invalidation only costs a re-list
        pass


# ---------------------------------------------------------------------------------------------
# reading


def read_bytes(fs, path: str) -> bytes:
    return with_retries(f"read {path}", lambda _i: fs.cat_file(path))


def list_names(fs, folder: str) -> list[str]:
    """Sorted base names of the files directly in ``folder``, freshly listed (no stale cache:
    other processes write here). A missing folder is empty."""
    _invalidate(fs, folder)

    def attempt(_i: int) -> list[str]:
        try:
            entries = fs.ls(folder, detail=True, **({"refresh": True} if _accepts_refresh(fs) else {}))
        except FileNotFoundError:
            return []
        return [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") != "directory"]

    return sorted(with_retries(f"list {folder}", attempt))


def _is_cloud(fs) -> bool:
    return any(p in ("gs", "gcs", "s3", "s3a") for p in _protocols(fs))


_accepts_refresh = _is_cloud


def exists(fs, path: str) -> bool:
    _invalidate(fs, path)
    return with_retries(f"stat {path}", lambda _i: fs.exists(path))
