"""Where the activations come from: a store (here) or the model on the fly (features/model_source.py).

A source knows every sample key up front (a store's index files; the rendered prompts), which
fixes the tie-break order of the top-K (sample keys in string order) and the number of samples
of each (task, test index), so that consistency can reduce a group as soon as it is complete.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from arclens.errors import UserError
from arclens.features.batch import COLUMNS, Batch, BatchBuilder
from arclens.features.cells import SampleCells, task_grids
from arclens.features.spans import copy_span
from arclens.prompts import Augmentation
from arclens.store.metadata import tasks_fingerprint
from arclens.store.reader import in_background

__all__ = ["Plan", "StoreSource", "TaskGrids", "group_of_key", "tasks_fingerprint"]

PAD_TO = 1024  # batches longer than --batch-tokens (one long sample) are padded to a multiple of this
_KEEP_FREE = 4  # released activation buffers kept for reuse (the pass holds 2, and 2 more are built ahead)


def group_of_key(key: str) -> str:
    """``task/test/aug`` -> ``task/test`` (task ids may themselves contain '/')."""
    return key.rsplit("/", 1)[0]


@dataclass
class Plan:
    """Every sample key of the source, its rank in string order, and its (task, test index) group."""

    keys: list[str]
    rank: dict[str, int]
    group: dict[str, int]
    group_sizes: np.ndarray

    @classmethod
    def from_keys(cls, keys) -> Plan:
        keys = sorted(set(keys))
        names: dict[str, int] = {}
        group = {k: names.setdefault(group_of_key(k), len(names)) for k in keys}
        sizes = np.bincount(np.fromiter(group.values(), np.int64, len(group)), minlength=len(names))
        return cls(keys, {k: i for i, k in enumerate(keys)}, group, sizes)


class TaskGrids:
    """Per task id, the task's grids by test index and grid number (features/cells.py)."""

    def __init__(self, tasks, where: str):
        self.where = where
        self.by_id = {t.task_id: t for t in tasks}
        self._grids: dict[str, list] = {}

    def sample_cells(self, info: dict) -> SampleCells:
        task_id, test_index, key = info["task_id"], int(info["test_index"]), info["key"]
        if task_id not in self.by_id:
            raise UserError(f"sample {key}: task {task_id!r} is not in {self.where}; pass the tasks this store "
                            "was made from with --tasks")
        if task_id not in self._grids:
            self._grids[task_id] = task_grids(self.by_id[task_id])
        per_test = self._grids[task_id]
        if not 0 <= test_index < len(per_test):
            raise UserError(f"sample {key}: task {task_id!r} in {self.where} has {len(per_test)} test inputs")
        try:
            aug = Augmentation.from_json(info["augmentation"])
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"sample {key}: unreadable augmentation in the store ({err})") from None
        return SampleCells(key, per_test[test_index], aug)


class StoreSource:
    """Whole samples of one hook of a store, in stored order, packed into batches of ~N tokens.

    A batch's activations are copied into a host buffer, and `release` gives that buffer back for
    a later batch: a fresh ``[N, d]`` array costs its page faults on top of the copy, about as much
    again (at d_model 896: ~410 ns a token fresh, ~205 reused; docs/BENCHMARKS.md). A caller that
    never releases gets fresh buffers."""

    def __init__(self, store, hook: str, grids: TaskGrids):
        self.store, self.hook, self.grids = store, hook, grids
        self.plan = Plan.from_keys(store.committed.owner)
        self._free: list[np.ndarray] = []  # released activation buffers
        self._free_lock = threading.Lock()  # (released by the pass, taken by the source's thread)

    @property
    def n_samples(self) -> int:
        return len(self.plan.keys)

    @property
    def n_tokens(self) -> int:
        return self.store.n_tokens

    def batches(self, batch_tokens: int, ahead: int = 0) -> Iterator[Batch]:
        """The batches in stored order; with ``ahead`` > 0, built by a thread of their own up to
        that many ahead of the caller. The pass does so: reading and looking up the roles then
        overlaps the host's share of the fold, which is mostly numpy and memory copies that let
        go of the interpreter lock (on two cores, a source at d_model 896 and the share of 1.5M
        tokens took 1.11-1.40 s and 0.29-0.33 s alone, 1.21-1.30 s together: docs/BENCHMARKS.md)."""
        if ahead > 0:
            return in_background(self._batches(batch_tokens), ahead, name="arclens-features-source")
        return self._batches(batch_tokens)

    def _batches(self, batch_tokens: int) -> Iterator[Batch]:
        pending: list[tuple[dict, dict]] = []
        filled = 0
        for info, arrays in self.store.samples(hooks=[self.hook]):
            n = len(arrays["position"])
            if pending and filled + n > batch_tokens:
                yield self._batch(pending, filled, batch_tokens)
                pending, filled = [], 0
            pending.append((info, arrays))
            filled += n
        if pending:
            yield self._batch(pending, filled, batch_tokens)

    def release(self, batch: Batch) -> None:
        """`batch` is done with: its activations' buffer may be written over by a later batch.
        Call it only once the device has finished with them too (on the CPU backend they may be
        aliased; an accelerator may still be copying them), i.e. once the batch's results are in."""
        if isinstance(batch.x, np.ndarray):
            with self._free_lock:
                self._free.append(batch.x)
                del self._free[:-_KEEP_FREE]  # (the newest: a long sample's odd-sized buffer ages out)
        batch.x = None

    def _buffer(self, size: int, dtype) -> np.ndarray:
        with self._free_lock:
            for i, x in enumerate(self._free):
                if x.shape == (size, self.store.d_model) and x.dtype == dtype:
                    return self._free.pop(i)
        return np.empty((size, self.store.d_model), dtype=dtype)

    def _batch(self, pending, filled: int, batch_tokens: int) -> Batch:
        size = max(batch_tokens, -(-filled // PAD_TO) * PAD_TO)
        builder = BatchBuilder(size)
        x = self._buffer(size, pending[0][1][self.hook].dtype)
        x[filled:] = 0  # (padding slots: valid = 0, but encoded all the same)
        # The activations are copied by threads of their own while this one looks up the roles
        # (numpy lets go of the interpreter lock in a large copy). A copy out of the store's map is
        # bound by each thread's page walks, not by the memory: two threads copy at d_model 896 in
        # ~165 ns a token where one takes ~330 (docs/BENCHMARKS.md), so the rows are split.
        pieces, start = [], 0
        for _, arrays in pending:
            part = arrays[self.hook]
            pieces.append((x[start:start + len(part)], part))
            start += len(part)
        cuts = np.linspace(0, filled, _COPY_THREADS + 1).astype(np.int64).tolist()
        copies = [_COPIER.submit(copy_span, pieces, lo, hi) for lo, hi in itertools.pairwise(cuts) if hi > lo]
        try:
            start = 0
            for info, arrays in pending:
                key = info["key"]
                builder.add(start, self.plan.rank[key], self.plan.group[key], info,
                            {c: arrays[c] for c in COLUMNS}, self.grids.sample_cells(info))
                start += len(arrays["position"])
            batch = builder.build(x)  # (where the roles are looked up, the whole batch at once)
        finally:
            concurrent.futures.wait(copies)  # (x is the batch's once its copies are done, error or not)
        for copy in copies:
            copy.result()
        return batch


_COPY_THREADS = 2
_COPIER = concurrent.futures.ThreadPoolExecutor(max_workers=_COPY_THREADS, thread_name_prefix="arclens-features-copy")
