"""Writing an activation store: metadata once, then whole shards each committed by an index file.

Commit protocol (SPEC.md section 3, docs/STORE.md):

1. ``metadata.json`` is created create-only; a resume compares its settings and refuses others.
2. A shard is serialized to a spool file (local stores: a temp file next to its final name), then
   published whole under ``shards/<writer>-<seq>.safetensors``.
3. Only then is ``index/<writer>-<seq>.json`` created, create-only. That one small object is the
   commit: a crash before it leaves an invisible shard, a crash after it a complete sample set.

A writer never reuses a seq: it starts after the highest seq of any shard *or* index file that
carries its name, so a leftover shard from a crash is never committed by a later run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass

import numpy as np

from arclens import __version__
from arclens.errors import UserError
from arclens.store import fs as fsx
from arclens.store.format import (
    COLUMNS,
    FORMAT,
    INDEX_DIR,
    INPUT_COLUMNS,
    MAX_SAMPLES_PER_SHARD,
    METADATA_FILE,
    SHARDS_DIR,
    VERSION,
    activation_dtype,
    check_metadata,
    check_writer_name,
    describe_difference,
    encode_json,
    index_relpath,
    metadata_differences,
    seq_of,
    shard_relpath,
    shard_stem,
    write_shard,
)
from arclens.store.index import IndexEntry, committed_keys, read_metadata  # noqa: F401 - re-export

log = logging.getLogger(__name__)

SAMPLE_FIELDS = ("key", "task_id", "test_index", "augmentation", "prompt_tokens")


@dataclass(frozen=True)
class StoreHandle:
    dest: str
    fs: object
    root: str
    metadata: dict


def open_or_create_store(dest: str, metadata: dict, storage_options: dict | None = None) -> StoreHandle:
    """Create the store with ``metadata`` (``format``, ``version``, ``created_at`` and
    ``arclens_version`` are filled in when absent), or open an existing one whose settings equal
    ``metadata``; otherwise UserError naming every differing field."""
    meta = {"format": FORMAT, "version": VERSION, **metadata}
    meta.setdefault("created_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    meta.setdefault("arclens_version", __version__)
    try:
        check_metadata(meta, "store metadata")
    except ValueError as err:
        raise UserError(str(err)) from None
    fs, root = fsx.get_fs(dest, storage_options)
    path = fsx.join(root, METADATA_FILE)
    try:
        fsx.create_only(fs, path, encode_json(meta))
        return StoreHandle(dest, fs, root, meta)
    except FileExistsError:
        pass  # an existing store (or a concurrent creator): compare below
    except PermissionError as err:
        raise UserError(f"{dest}: cannot write here ({err})") from None
    except OSError as err:
        if fsx.is_transient(err):
            raise
        raise UserError(f"{dest}: cannot create the store ({type(err).__name__}: {err})") from None
    existing = read_metadata(fs, root, dest)
    diffs = metadata_differences(existing, meta)
    if diffs:
        details = "; ".join(describe_difference(existing, meta, d) for d in diffs[:6])
        raise UserError(
            f"{dest} already holds a store with other settings ({', '.join(diffs)}): {details}. "
            "Use another --out, or the original settings to resume."
        )
    return StoreHandle(dest, fs, root, existing)


@dataclass(frozen=True)
class Commit:
    """What one flush committed."""

    index: str
    shard: str
    sha256: str
    bytes: int
    n_tokens: int
    samples: tuple[str, ...]


class StoreWriter:
    """Buffers samples and writes them as committed shards of about ``shard_bytes`` each.

    ``hooks``, ``d_model`` and ``dtype`` default to the store's metadata.json (create it first
    with ``open_or_create_store``); when given, they must agree with it. ``add`` keeps references
    to the arrays it is given (no copy): do not modify them afterwards. Not meant to be shared by
    concurrent writers: give every process its own ``writer`` name. A writer name must not be used
    by two processes at once; a collision is detected at commit time (create-only index), never
    silently merged.
    """

    def __init__(
        self,
        dest: str,
        writer: str,
        shard_bytes: int = 1 << 30,
        hooks: list[str] | tuple[str, ...] | None = None,
        d_model: int | None = None,
        dtype: str | None = None,
        *,
        storage_options: dict | None = None,
        max_samples_per_shard: int = MAX_SAMPLES_PER_SHARD,
        spool_dir: str | None = None,
    ):
        self.dest = dest
        self.writer = check_writer_name(writer)
        self.shard_bytes = int(shard_bytes)
        self.max_samples = int(max_samples_per_shard)
        if self.shard_bytes <= 0 or self.max_samples <= 0:
            raise ValueError("shard_bytes and max_samples_per_shard must be positive")
        self.fs, self.root = fsx.get_fs(dest, storage_options)
        self._local = fsx.is_local(self.fs)
        # Remote shards are spooled to local disk first (whole-object upload, retries without
        # re-serializing): ARCLENS_SPOOL_DIR or the system temp dir must hold one shard.
        self._spool_dir = spool_dir or os.environ.get("ARCLENS_SPOOL_DIR") or None
        self._resolve_settings(hooks, d_model, dtype)
        self._lock = threading.RLock()
        self._next_seq = self._first_free_seq()
        self._reset_buffer()
        self._keys_seen: set[str] = set()
        self.commits: list[Commit] = []

    # -- setup -----------------------------------------------------------------------------

    def _resolve_settings(self, hooks, d_model, dtype) -> None:
        meta = None
        if fsx.exists(self.fs, fsx.join(self.root, METADATA_FILE)):
            meta = read_metadata(self.fs, self.root, self.dest)
        if meta is None and (hooks is None or d_model is None or dtype is None):
            raise UserError(f"{self.dest}: no {METADATA_FILE}; create the store first or pass hooks, "
                            "d_model and dtype")
        given = {"hooks": list(hooks) if hooks is not None else None, "d_model": d_model, "dtype": dtype}
        if meta is not None:
            for k, v in given.items():
                if v is not None and v != meta[k]:
                    raise UserError(f"{self.dest}: writer {k}={v!r} disagrees with the store's {meta[k]!r}")
                given[k] = meta[k]
        self.hooks: tuple[str, ...] = tuple(given["hooks"])
        self.d_model = int(given["d_model"])
        self.dtype_name = given["dtype"]
        self.dtype = activation_dtype(self.dtype_name)
        self._dtypes = {h: self.dtype for h in self.hooks} | dict(COLUMNS)
        self._bytes_per_token = self.d_model * self.dtype.itemsize * len(self.hooks) + sum(
            dt.itemsize for dt in COLUMNS.values())

    def _first_free_seq(self) -> int:
        seqs = [-1]
        for folder in (SHARDS_DIR, INDEX_DIR):
            for name in fsx.list_names(self.fs, fsx.join(self.root, folder)):
                s = seq_of(name, self.writer)
                if s is not None:
                    seqs.append(s)
        return max(seqs) + 1

    def _reset_buffer(self) -> None:
        self._chunks: dict[str, list[np.ndarray]] = {name: [] for name in self._dtypes}
        self._samples: list[dict] = []
        self._n_tokens = 0

    # -- adding ----------------------------------------------------------------------------

    @property
    def buffered_bytes(self) -> int:
        return self._n_tokens * self._bytes_per_token

    def add(self, sample_meta: dict, arrays: dict[str, np.ndarray]) -> Commit | None:
        """Buffer one sample; returns the Commit when this add completed a shard. A sample is
        never split across shards."""
        sample, cols = self._validate(sample_meta, arrays)
        n = sample["stored_tokens"]
        commit = None
        with self._lock:
            if self._samples and (self.buffered_bytes + n * self._bytes_per_token > self.shard_bytes
                                  or len(self._samples) >= self.max_samples):
                commit = self.flush()
            row = len(self._samples)
            self._samples.append(sample)
            self._keys_seen.add(sample["key"])
            for name, arr in cols.items():
                self._chunks[name].append(arr)
            self._chunks["sample"].append(np.full(n, row, dtype=np.int32))
            self._n_tokens += n
            if self.buffered_bytes >= self.shard_bytes:
                commit = self.flush()
        return commit

    def _validate(self, sample_meta: dict, arrays: dict[str, np.ndarray]):
        missing = [f for f in SAMPLE_FIELDS if f not in sample_meta]
        if missing:
            raise ValueError(f"sample metadata lacks {', '.join(missing)}")
        key = sample_meta["key"]
        if not isinstance(key, str) or not key:
            raise ValueError(f"sample key {key!r} must be a non-empty string")
        if key in self._keys_seen:
            raise ValueError(f"sample {key!r} was already added to this writer")
        expected = set(self.hooks) | set(INPUT_COLUMNS)
        if set(arrays) != expected:
            extra, lacking = set(arrays) - expected, expected - set(arrays)
            raise ValueError(f"sample {key}: arrays must be exactly the hooks and columns; "
                             f"unexpected {sorted(extra)}, missing {sorted(lacking)}")
        n = int(np.shape(arrays["token_id"])[0]) if np.ndim(arrays["token_id"]) == 1 else -1
        cols = {}
        for name in expected:
            arr = np.asarray(arrays[name])
            want = (n, self.d_model) if name in self.hooks else (n,)
            if arr.shape != want:
                raise ValueError(f"sample {key}: {name} has shape {arr.shape}, expected {want}")
            # The store's dtype is authoritative: float32 captures are cast to bf16 here.
            cols[name] = np.ascontiguousarray(arr, dtype=self._dtypes[name])
        sample = {k: sample_meta[k] for k in SAMPLE_FIELDS}
        sample["stored_tokens"] = n
        json.dumps(sample)  # fail now, not at flush, if something is not JSON-serialisable
        return sample, cols

    # -- committing ------------------------------------------------------------------------

    def flush(self) -> Commit | None:
        """Write the buffered samples as one shard and commit it. Returns None when empty.

        On failure nothing is committed and the buffer is kept, so a retry of ``flush`` (or the
        next run, which re-extracts uncommitted samples) loses nothing."""
        with self._lock:
            if not self._samples:
                return None
            stem = self._claim_stem()
            shard_rel, index_rel = shard_relpath(stem), index_relpath(stem)
            meta = {"samples": json.dumps(self._samples, separators=(",", ":")),
                    "format": FORMAT, "version": str(VERSION)}
            t0 = time.perf_counter()
            size, sha = self._publish_shard(shard_rel, meta)
            keys = tuple(s["key"] for s in self._samples)
            entry = IndexEntry(stem + ".json", shard_rel, sha, size, self._n_tokens, keys)
            try:
                fsx.create_only(self.fs, fsx.join(self.root, index_rel), encode_json(entry.to_json()))
            except FileExistsError:
                raise RuntimeError(
                    f"{self.dest}/{index_rel} already exists: another process uses writer name "
                    f"{self.writer!r}; nothing of this shard was committed") from None
            commit = Commit(index_rel, shard_rel, sha, size, self._n_tokens, keys)
            log.info("committed %s: %d samples, %d tokens, %.1f MB in %.2fs", shard_rel, len(keys),
                     self._n_tokens, size / 1e6, time.perf_counter() - t0)
            self.commits.append(commit)
            self._reset_buffer()
            return commit

    def _claim_stem(self) -> str:
        # Defensive against a name collision with another process: skip any seq already present.
        while True:
            stem = shard_stem(self.writer, self._next_seq)
            self._next_seq += 1
            taken = any(fsx.exists(self.fs, fsx.join(self.root, rel))
                        for rel in (shard_relpath(stem), index_relpath(stem)))
            if not taken:
                return stem

    def _publish_shard(self, shard_rel: str, meta: dict[str, str]) -> tuple[int, str]:
        final = fsx.join(self.root, shard_rel)
        if self._local:
            folder = os.path.dirname(final)
            os.makedirs(folder, exist_ok=True)
            spool_dir = folder  # same folder: os.replace publishes without copying
        else:
            spool_dir = self._spool_dir
        fd, tmp = tempfile.mkstemp(prefix=".spool-", suffix=".safetensors", dir=spool_dir)
        try:
            with os.fdopen(fd, "wb") as f:
                size, sha = write_shard(f, self._chunks, self._dtypes, meta)
                f.flush()
                os.fsync(f.fileno())
            if self._local:
                os.replace(tmp, final)
                fsx._fsync_dir(os.path.dirname(final))
            else:
                fsx.write_whole(self.fs, final, local_file=tmp)
        finally:
            fsx._silent_unlink(tmp)
        return size, sha

    def close(self) -> Commit | None:
        return self.flush()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # On an exception the buffer is dropped on purpose: those samples are not committed and a
        # resumed run extracts them again.
        if exc_type is None:
            self.close()


def file_sha256(path: str, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
