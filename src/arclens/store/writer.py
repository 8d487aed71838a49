"""Writing an activation store: metadata once, then whole shards each committed by an index file.

Commit protocol (SPEC.md section 3, docs/STORE.md):

1. ``metadata.json`` is created create-only; a resume compares its settings and refuses others
   (``open_or_create_store``, store/creation.py; re-exported here).
2. A shard is serialized to a spool file (local stores: a temp file next to its final name), then
   published whole under ``shards/<writer>-<seq>.safetensors``.
3. Only then is ``index/<writer>-<seq>.json`` created, create-only. That one small object is the
   commit: a crash before it leaves an invisible shard, a crash after it a complete sample set.

A writer never reuses a seq: it starts after the highest seq of any shard *or* index file that
carries its name, so a leftover shard from a crash is never committed by a later run.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from arclens.crashpoints import crash_point
from arclens.data.atomic import fsync_dir, temp_file_beside
from arclens.errors import RunFailed, UserError
from arclens.store import fs as fsx
from arclens.store.creation import StoreHandle, open_or_create_store  # noqa: F401 - re-export
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
    check_writer_name,
    encode_json,
    index_relpath,
    seq_of,
    shard_relpath,
    shard_stem,
    write_shard,
)
from arclens.store.index import IndexEntry, committed_keys, read_metadata  # noqa: F401 - re-export

log = logging.getLogger(__name__)

SAMPLE_FIELDS = ("key", "task_id", "test_index", "augmentation", "prompt_tokens")

# Shards published at once in the background (``publish_threads``, ``--publish-threads``; 0 =
# inline). Serialising a shard is sha256 + memory copies + a write and fsync or an upload: one
# core's worth of work per shard. Publishing in a small pool lets the next shard fill (and other
# shards hash and upload) meanwhile, so the stage that feeds the writer is not held up by one shard.
DEFAULT_PUBLISH_THREADS = 2


class CommitRefused(RunFailed):
    """The commit guard said no: this writer may no longer commit (its claim was lost)."""


@dataclass
class _PendingShard:
    """A full buffer on its way to the store: its own chunks, so the writer can fill the next."""

    stem: str
    chunks: dict[str, list[np.ndarray]]
    samples: list[dict]
    n_tokens: int
    future: Future | None = field(default=None, repr=False)


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

    ``commit_guard``: called right before each index file (the commit) is created, after its shard
    is published; False means "this writer may no longer commit" (a worker's claim was lost): the
    shard stays invisible and ``CommitRefused`` is raised (by ``add``/``flush``, like any
    publishing failure). ``abandon`` then drops everything uncommitted.
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
        publish_threads: int | None = None,
        commit_guard: Callable[[], bool] | None = None,
    ):
        self.dest = dest
        self.commit_guard = commit_guard
        self.writer = check_writer_name(writer)
        self.shard_bytes = int(shard_bytes)
        self.max_samples = int(max_samples_per_shard)
        if self.shard_bytes <= 0 or self.max_samples <= 0:
            raise ValueError("shard_bytes and max_samples_per_shard must be positive")
        self.fs, self.root = fsx.get_fs(dest, storage_options)
        self._local = fsx.is_local(self.fs)
        # Remote shards are spooled to local disk first (whole-object upload, retries without
        # re-serializing): ARCLENS_SPOOL_DIR (deployment.py) or the system temp dir must hold one shard.
        from arclens.deployment import spool_dir as deployment_spool_dir

        self._spool_dir = spool_dir or deployment_spool_dir()
        self._resolve_settings(hooks, d_model, dtype)
        self._lock = threading.RLock()  # the buffer; held while add() waits for the pool
        self._commits_lock = threading.Lock()  # the commit list (read by other threads, e.g. progress)
        self._next_seq = self._first_free_seq()
        self._reset_buffer()
        self._keys_seen: set[str] = set()
        self.commits: list[Commit] = []
        self.publish_threads = DEFAULT_PUBLISH_THREADS if publish_threads is None else int(publish_threads)
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[_PendingShard] = []  # submitted, not yet known to be committed
        self._failed: list[_PendingShard] = []  # publication failed; retried by the next flush()
        self._error: BaseException | None = None

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
        """Buffer one sample. A sample is never split across shards. When this add fills a shard,
        the shard is handed to the publishing pool (returns None) or, with ``publish_threads=0``,
        published here (returns its Commit). A background failure is raised by the next call."""
        self._raise_background_error()
        sample, cols = self._validate(sample_meta, arrays)
        n = sample["stored_tokens"]
        commit = None
        with self._lock:
            if self._samples and (self.buffered_bytes + n * self._bytes_per_token > self.shard_bytes
                                  or len(self._samples) >= self.max_samples):
                commit = self._rotate()
            row = len(self._samples)
            self._samples.append(sample)
            self._keys_seen.add(sample["key"])
            for name, arr in cols.items():
                self._chunks[name].append(arr)
            self._chunks["sample"].append(np.full(n, row, dtype=np.int32))
            self._n_tokens += n
            if self.buffered_bytes >= self.shard_bytes:
                commit = self._rotate()
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
        """Publish the buffered samples as one shard, wait until every shard handed to the pool is
        committed, and return the last Commit (None when nothing was ever committed).

        On failure nothing of the failed shard is committed and its samples are kept, so a retry
        of ``flush`` (or the next run, which re-extracts uncommitted samples) loses nothing."""
        with self._lock:
            retry, self._failed = self._failed, []
            self._error = None
            for i, job in enumerate(retry):
                try:
                    self._submit(job)
                except BaseException:
                    self._failed.extend(retry[i + 1:])  # untried: kept for the next flush
                    raise
            if self._samples:
                self._submit(self._take_buffer())
        self._wait_all()
        self._raise_background_error()
        with self._commits_lock:
            return self.commits[-1] if self.commits else None

    def _rotate(self) -> Commit | None:
        job = self._take_buffer()
        self._submit(job)
        return self.commits[-1] if self.publish_threads == 0 and self.commits else None

    def _take_buffer(self) -> _PendingShard:
        job = _PendingShard(self._claim_stem(), self._chunks, self._samples, self._n_tokens)
        self._reset_buffer()
        return job

    def _submit(self, job: _PendingShard) -> None:
        if self.publish_threads <= 0:
            try:
                commit = self._commit(job)
            except BaseException:
                self._failed.append(job)  # inline: the error propagates, the job is kept for a retry
                raise
            with self._commits_lock:
                self.commits.append(commit)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.publish_threads, thread_name_prefix="arclens-publish")
        # Back-pressure: at most publish_threads shards in flight, so host memory stays bounded
        # (each pending shard holds its buffers) and a slow store slows the feeder, never fills RAM.
        while len(self._pending) >= self.publish_threads:
            self._wait_one()
        job.future = self._pool.submit(self._commit, job)
        self._pending.append(job)

    def _wait_one(self) -> None:
        # First in, first out: ``commits`` lists shards in seq order whichever finished first.
        job = self._pending.pop(0)
        try:
            commit = job.future.result()
        except BaseException as err:  # noqa: BLE001 - kept and re-raised by the caller's next call
            self._failed.append(job)
            if self._error is None:
                self._error = err
            return
        with self._commits_lock:
            self.commits.append(commit)

    def _wait_all(self) -> None:
        while self._pending:
            self._wait_one()

    def _raise_background_error(self) -> None:
        if self._error is not None:
            self._wait_all()  # every shard in flight ends committed or kept for the retry
            raise self._error

    def _commit(self, job: _PendingShard) -> Commit:
        """Write one shard, then create its index file: the commit. Runs in the pool (or inline)."""
        shard_rel, index_rel = shard_relpath(job.stem), index_relpath(job.stem)
        meta = {"samples": json.dumps(job.samples, separators=(",", ":")),
                "format": FORMAT, "version": str(VERSION)}
        t0 = time.perf_counter()
        size, sha = self._publish_shard(shard_rel, meta, job.chunks)
        crash_point("shard-written")  # tests: a kill here leaves a whole shard without its index file
        keys = tuple(s["key"] for s in job.samples)
        entry = IndexEntry(job.stem + ".json", shard_rel, sha, size, job.n_tokens, keys)
        try:
            fsx.create_only(self.fs, fsx.join(self.root, index_rel), encode_json(entry.to_json()),
                            just_before=lambda: self._check_guard(index_rel))
        except FileExistsError:
            raise self._name_collision(index_rel) from None
        commit = Commit(index_rel, shard_rel, sha, size, job.n_tokens, keys)
        log.info("committed %s: %d samples, %d tokens, %.1f MB in %.2fs", shard_rel, len(keys),
                 job.n_tokens, size / 1e6, time.perf_counter() - t0)
        return commit

    def _check_guard(self, index_rel: str) -> None:
        # Called by create_only as late as the backend allows (locally: right before the link).
        if self.commit_guard is not None and not self.commit_guard():
            raise CommitRefused(f"{self.dest}/{index_rel}: not committed, the writer's claim is lost")

    def _name_collision(self, rel: str) -> RunFailed:
        return RunFailed(
            f"{self.dest}/{rel} already exists: another live process writes into this store under the "
            f"writer name {self.writer!r}; nothing of this shard was committed. Give each concurrent run "
            "its own --writer, or run them as --worker-id/--num-workers")

    def _claim_stem(self) -> str:
        # Defensive against a name collision with another process: skip any seq already present.
        while True:
            stem = shard_stem(self.writer, self._next_seq)
            self._next_seq += 1
            taken = any(fsx.exists(self.fs, fsx.join(self.root, rel))
                        for rel in (shard_relpath(stem), index_relpath(stem)))
            if not taken:
                return stem

    def _publish_shard(self, shard_rel: str, meta: dict[str, str], chunks: dict[str, list[np.ndarray]]) -> tuple[int, str]:
        final = fsx.join(self.root, shard_rel)
        if self._local:
            os.makedirs(os.path.dirname(final), exist_ok=True)
            spool = None  # beside the shard: a hard link publishes it without copying
        else:
            spool = self._spool_dir or tempfile.gettempdir()
        tmp = None
        try:
            try:
                with temp_file_beside(final, "wb", folder=spool) as (f, tmp):
                    size, sha = write_shard(f, chunks, self._dtypes, meta)
            except OSError as err:
                if err.filename is None:  # a full disk says which disk: name the file being written
                    err.filename = final if self._local else (tmp or spool)
                raise
            if self._local:
                # Never over another file: a shard of this name exists only if another live
                # process writes under the same writer name (a leftover of a crashed run is
                # skipped by _claim_stem), and replacing it would break that process's commit.
                try:
                    fsx.link_exclusive(tmp, final)
                except FileExistsError:
                    raise self._name_collision(shard_rel) from None
                fsync_dir(os.path.dirname(final))
            else:
                try:
                    fsx.upload_exclusive(self.fs, tmp, final)
                except FileExistsError:
                    raise self._name_collision(shard_rel) from None
        finally:
            if tmp is not None:
                fsx._silent_unlink(tmp)
        return size, sha

    def close(self) -> Commit | None:
        try:
            return self.flush()
        finally:
            if self._pool is not None and not self._failed:
                self._pool.shutdown(wait=True)
                self._pool = None

    def abandon(self) -> None:
        """Drop every sample not committed yet (the buffer, shards that failed or were refused)
        after the shards in flight have ended; a resumed run extracts them again."""
        with self._lock:
            self._reset_buffer()
        self._wait_all()
        self._failed, self._error = [], None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # On an exception the buffer is dropped on purpose: those samples are not committed and a
        # resumed run extracts them again. Shards already handed to the pool are still waited for:
        # each commits whole or not at all.
        if exc_type is None:
            self.close()
        else:
            self.abandon()
