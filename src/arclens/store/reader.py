"""Reading an activation store (SPEC.md section 4). Never unpickles anything.

Only committed shards are visible (those named by an index file), and a key committed twice is
read from the first index file in name order only. Reads fetch just the tensors asked for: local
shards are memory-mapped, remote ones are read with ranged requests, and the next shard is fetched
by a background thread while the current one is consumed.
"""

from __future__ import annotations

import concurrent.futures as cf
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TypeVar

import numpy as np

from arclens.errors import UserError
from arclens.store import fs as fsx
from arclens.store.format import COLUMNS, HeaderTooShort, ShardHeader, parse_header
from arclens.store.index import Committed, IndexEntry, read_committed, read_metadata

T = TypeVar("T")
_HEADER_PROBE = 1 << 16


class ShardFile:
    """One shard file: its parsed header and tensor reads, local (memory-mapped) or remote."""

    def __init__(self, fs, path: str):
        self.fs, self.path = fs, path
        self._local = fsx.is_local(fs)
        self._mmap: np.memmap | None = None

    @cached_property
    def header(self) -> ShardHeader:
        if self._local:
            buf = self._buffer()
            try:
                return parse_header(bytes(buf[:_HEADER_PROBE]), total_size=len(buf))
            except HeaderTooShort as short:
                return parse_header(bytes(buf[: short.needed]), total_size=len(buf))
        size = fsx.with_retries(f"stat {self.path}", lambda _i: self.fs.size(self.path))
        prefix = self._range(0, min(_HEADER_PROBE, size))
        try:
            return parse_header(prefix, total_size=size)
        except HeaderTooShort as short:
            return parse_header(self._range(0, short.needed), total_size=size)

    def _buffer(self) -> np.memmap:
        if self._mmap is None:
            self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
        return self._mmap

    def _range(self, start: int, end: int) -> bytes:
        return fsx.with_retries(f"read {self.path}", lambda _i: self.fs.cat_file(self.path, start=start, end=end))

    def read(self, names) -> dict[str, np.ndarray]:
        """Whole tensors by name: read-only memory-mapped views locally, fresh arrays remotely."""
        infos = {}
        for name in names:
            if name not in self.header.tensors:
                raise KeyError(f"{self.path}: no tensor {name!r}")
            infos[name] = self.header.tensors[name]
        if self._local:
            buf = self._buffer()
            return {n: buf[i.start : i.end].view(i.dtype).reshape(i.shape) for n, i in infos.items()}
        order = list(infos)
        blobs = fsx.with_retries(
            f"read {self.path}",
            lambda _i: self.fs.cat_ranges([self.path] * len(order), [infos[n].start for n in order],
                                          [infos[n].end for n in order], on_error="raise"),
        )
        out = {}
        for n, blob in zip(order, blobs):
            if isinstance(blob, Exception):
                raise blob
            i = infos[n]
            out[n] = np.frombuffer(blob, dtype=i.dtype).reshape(i.shape)
        return out


@dataclass(frozen=True)
class ShardView:
    """A committed shard as readers see it: the rows of its sample table that it owns."""

    entry: IndexEntry
    file: ShardFile
    owned_rows: frozenset[int] | None  # None: every row (the usual case, no duplicates)

    def sample_table(self) -> list[dict]:
        return self.file.header.samples

    def token_ranges(self) -> list[tuple[int, int, int]]:
        """(row, start, end) token range of every visible sample, in stored order."""
        out, start = [], 0
        for row, s in enumerate(self.sample_table()):
            end = start + int(s["stored_tokens"])
            if self.owned_rows is None or row in self.owned_rows:
                out.append((row, start, end))
            start = end
        return out

    @cached_property
    def n_tokens(self) -> int:
        if self.owned_rows is None:
            return self.entry.n_tokens
        return sum(e - s for _, s, e in self.token_ranges())

    def visible(self, arr: np.ndarray) -> np.ndarray:
        if self.owned_rows is None:
            return arr
        ranges = self.token_ranges()
        if not ranges:
            return arr[:0]
        return np.concatenate([arr[s:e] for _, s, e in ranges])


class Store:
    """A read-only view of the committed part of an activation store, as of ``open_store``."""

    def __init__(self, dest: str, storage_options: dict | None = None, prefetch: int = 1):
        self.dest = dest
        self.fs, self.root = fsx.get_fs(dest, storage_options)
        self.metadata: dict = read_metadata(self.fs, self.root, dest)
        self.hooks: list[str] = list(self.metadata["hooks"])
        self.d_model: int = int(self.metadata["d_model"])
        self.committed: Committed = read_committed(self.fs, self.root)
        self.prefetch = max(0, int(prefetch))
        self.shards: list[ShardView] = []
        for entry in self.committed.entries:
            owned = None
            if any(not self.committed.owns(entry, k) for k in entry.samples):
                owned = frozenset(r for r, k in enumerate(entry.samples) if self.committed.owns(entry, k))
            file = ShardFile(self.fs, fsx.join(self.root, entry.shard))
            self.shards.append(ShardView(entry, file, owned))

    def __repr__(self) -> str:
        return f"Store({self.dest!r}, shards={len(self.shards)}, n_tokens={self.n_tokens})"

    @property
    def dtype(self) -> np.dtype:
        from arclens.store.format import activation_dtype

        return activation_dtype(self.metadata["dtype"])

    @cached_property
    def n_tokens(self) -> int:
        return sum(s.n_tokens for s in self.shards)

    @property
    def n_samples(self) -> int:
        return len(self.committed.owner)

    def _check_hooks(self, hooks) -> list[str]:
        hooks = list(self.hooks if hooks is None else ([hooks] if isinstance(hooks, str) else hooks))
        unknown = [h for h in hooks if h not in self.hooks]
        if unknown:
            raise UserError(f"{self.dest}: no hook {', '.join(unknown)}; this store has {', '.join(self.hooks)}")
        return hooks

    # -- per sample ------------------------------------------------------------------------

    def samples(self, hooks=None) -> Iterator[tuple[dict, dict[str, np.ndarray]]]:
        """Every committed sample once, in index-file order: (sample table entry, arrays) where
        arrays holds the requested hooks ``[n, d_model]`` and every column ``[n]``."""
        names = self._check_hooks(hooks) + list(COLUMNS)

        def load(view: ShardView):
            return view, view.file.read(names)

        for view, arrays in _prefetched([lambda v=v: load(v) for v in self.shards], self.prefetch):
            table = view.sample_table()
            for row, start, end in view.token_ranges():
                yield dict(table[row]), {n: a[start:end] for n, a in arrays.items()}

    # -- token batches ---------------------------------------------------------------------

    def batches(self, hook: str | Sequence[str], batch_size: int = 4096, shuffle: bool = True, seed: int = 0,
                drop_last: bool = False, buffer_shards: int = 4, dtype=None):
        """``[batch_size, d_model]`` arrays holding every visible token of ``hook`` exactly once
        (one epoch). Only the last batch may be smaller, and it is dropped when ``drop_last``.

        ``hook`` may also be a list of hooks and per-token columns (``token_id``, ``position``,
        ``grid``, ``row``, ``col``, ``sample``): each batch is then a dict of arrays whose rows
        are the SAME tokens in the same order (``{hook: [b, d_model], column: [b]}``), e.g.
        ``["blocks.6.hook_resid_mid", "blocks.6.hook_mlp_out"]`` for a transcoder, or several
        layers for a crosscoder. Columns keep their dtype; ``dtype`` casts the hooks only.

        Without shuffle: tokens in stored order (index-file order, then token order). With shuffle:
        the shard order is a permutation drawn from ``seed``, and tokens are uniformly permuted
        within consecutive windows of ``buffer_shards`` shards (plus the fewer than
        ``batch_size`` tokens carried over from the previous window). Deterministic for a seed,
        and the same order for every hook list; pass a different seed per epoch. Memory: about
        ``buffer_shards`` shards of the requested hooks; with ``prefetch > 0`` (the default)
        twice that, as the next window is read while this one is cut, plus a few batches made
        ahead of the consumer.
        """
        single = isinstance(hook, str)
        names = self._check_names([hook] if single else list(hook))
        if batch_size <= 0 or buffer_shards <= 0:
            raise UserError("batch_size and buffer_shards must be positive")
        out_dtype = np.dtype(dtype) if dtype is not None else None
        batches = self._batches(tuple(names), batch_size, shuffle, seed, drop_last, buffer_shards, out_dtype)
        if single:
            batches = (b[names[0]] for b in batches)
        # With prefetch, batches are cut in a background thread (numpy's gathers and copies run
        # without the GIL), so a trainer's step overlaps the making of its next batch.
        return in_background(batches, _BATCHES_AHEAD) if self.prefetch else batches

    def _check_names(self, names: list[str]) -> list[str]:
        if not names:
            raise UserError(f"{self.dest}: batches() needs at least one hook")
        if len(set(names)) != len(names):
            raise UserError(f"{self.dest}: batches() got a name twice: {names}")
        hooks = self._check_hooks([n for n in names if n not in COLUMNS])
        if not hooks:
            raise UserError(f"{self.dest}: batches() needs at least one hook besides the columns {names}")
        return names

    def _empty(self, name: str, rows: int) -> np.ndarray:
        if name in COLUMNS:
            return np.empty((rows,), dtype=COLUMNS[name])
        return np.empty((rows, self.d_model), dtype=self.dtype)

    def _batches(self, names, batch_size, shuffle, seed, drop_last, buffer_shards, out_dtype):
        rng = np.random.default_rng(seed)
        views = list(self.shards)
        if shuffle:
            views = [views[i] for i in rng.permutation(len(views))]
            windows = [views[i : i + buffer_shards] for i in range(0, len(views), buffer_shards)]
        else:
            windows = [[v] for v in views]

        bs = batch_size

        def cast(name: str, x: np.ndarray) -> np.ndarray:
            return _cast(x, None if name in COLUMNS else out_dtype)

        def load(window: list[ShardView]) -> dict[str, np.ndarray]:
            reads = [v.file.read(names) for v in window]
            parts = {n: [v.visible(r[n]) for v, r in zip(window, reads)] for n in names}
            if not shuffle:
                return {n: p[0] for n, p in parts.items()}  # views into the memory map: copied once per batch
            # Materialise the window (a random gather from a memory map would thrash), leaving
            # ``batch_size`` spare rows in front for the previous window's carry-over, so joining
            # the two never copies the window a second time. Runs in the prefetch thread.
            pools = {}
            for n, ps in parts.items():
                pool = self._empty(n, bs + sum(p.shape[0] for p in ps))
                at = bs
                for p in ps:
                    pool[at : at + p.shape[0]] = p
                    at += p.shape[0]
                pools[n] = pool
            return pools

        carry = {n: self._empty(n, 0) for n in names}  # < batch_size rows, owned
        for pools in _prefetched([lambda w=w: load(w) for w in windows], self.prefetch):
            n_carry = carry[names[0]].shape[0]
            if shuffle:
                # Tokens = carry + window, uniformly permuted; batch k is rows perm[k*bs:(k+1)*bs],
                # gathered straight into a fresh array (never a permuted copy of the whole pool).
                pools = {n: _with_carry(p, carry[n], bs) for n, p in pools.items()}
                rows = pools[names[0]].shape[0]
                perm = rng.permutation(rows)
                full = (rows // bs) * bs
                for i in range(0, full, bs):
                    yield {n: cast(n, np.take(p, perm[i : i + bs], axis=0)) for n, p in pools.items()}
                carry = {n: np.take(p, perm[full:], axis=0) for n, p in pools.items()}
                del pools, perm  # freed before the next window is read, not after
                continue
            rows = pools[names[0]].shape[0]
            start = 0
            if n_carry:
                need = bs - n_carry
                if rows < need:
                    carry = {n: np.concatenate([carry[n], p]) for n, p in pools.items()}
                    continue
                yield {n: cast(n, np.concatenate([carry[n], p[:need]])) for n, p in pools.items()}
                start = need
            full = start + ((rows - start) // bs) * bs
            for i in range(start, full, bs):
                yield {n: cast(n, p[i : i + bs]) for n, p in pools.items()}
            carry = {n: np.array(p[full:]) for n, p in pools.items()}
        if carry[names[0]].shape[0] and not drop_last:
            yield {n: cast(n, c) for n, c in carry.items()}


def _with_carry(pool: np.ndarray, carry: np.ndarray, spare: int) -> np.ndarray:
    """The window ``pool`` (made with ``spare`` free rows in front) with ``carry`` in the last of
    them: one array, no copy of the window. A function, so no loop variable keeps a reference to
    the pool after the caller drops it."""
    out = pool[spare - carry.shape[0] :]
    out[: carry.shape[0]] = carry
    return out


def _cast(x: np.ndarray, dtype: np.dtype | None) -> np.ndarray:
    """A fresh, writable, C-contiguous array, never a view into a memory-mapped shard; ``x`` is
    copied only when it is not already such an array of ``dtype`` (a gather's result already is)."""
    fresh = x.flags.owndata and x.flags.writeable and x.flags.c_contiguous and not isinstance(x, np.memmap)
    if fresh and (dtype is None or x.dtype == dtype):
        return x
    return np.array(x, dtype=dtype, order="C")


class _Raised:
    def __init__(self, err: BaseException):
        self.err = err


_END = object()
_BATCHES_AHEAD = 4
_POLL_S = 0.05


def in_background(items: Iterator[T], depth: int, name: str = "arclens-batches") -> Iterator[T]:
    """``items``, produced by a daemon thread up to ``depth`` ahead. An error in the producer is
    raised in the consumer; a consumer that stops early stops (and closes) the producer. Also
    the SAE trainer's store source (sae/store_source.py)."""
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(x) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for x in items:
                if not put(x):
                    return
            put(_END)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            put(_Raised(err))
        finally:
            close = getattr(items, "close", None)  # a generator's; a plain iterator has none
            if close is not None:
                close()

    def consume() -> Iterator[T]:
        # Started by the first next(), so an iterator that is never iterated costs nothing.
        threading.Thread(target=produce, name=name, daemon=True).start()
        try:
            while True:
                x = q.get()
                if x is _END:
                    return
                if isinstance(x, _Raised):
                    raise x.err
                yield x
        finally:
            stop.set()

    return consume()


def _prefetched(loads: list[Callable[[], T]], depth: int) -> Iterator[T]:
    """Results of ``loads`` in order, running up to ``depth`` of them ahead in a thread."""
    if depth <= 0:
        for load in loads:
            yield load()
        return
    with cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="arclens-prefetch") as pool:
        pending: list[cf.Future] = []
        it = iter(loads)
        try:
            for load in it:
                pending.append(pool.submit(load))
                if len(pending) > depth:
                    yield pending.pop(0).result()
            while pending:
                yield pending.pop(0).result()
        finally:
            for f in pending:
                f.cancel()


def open_store(dest: str, storage_options: dict | None = None, prefetch: int = 1) -> Store:
    """Open the committed part of a store for reading (local path or fsspec URL)."""
    return Store(dest, storage_options=storage_options, prefetch=prefetch)
