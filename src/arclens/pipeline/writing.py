"""From a batch's captures on the host to samples in the store.

Each row of a batch is one sample (or a padding row, skipped). Only the sample's real tokens are
kept (``--positions all``: ``[0, n)``; ``last``: the last prompt token, already gathered on the
device), with its position, token id and grid/row/col roles. The slices are views into the batch
buffer, so nothing is copied here; the store's shard writer copies once, into the file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from arclens.pipeline.batching import Batch
from arclens.pipeline.crashpoints import ENV as CRASH_ENV
from arclens.pipeline.crashpoints import crash_point
from arclens.prompts import Sample


@dataclass
class BatchWork:
    """One scheduled batch on its way through the stages."""

    index: int  # in the run's global schedule
    batch: Batch
    samples: dict[int, Sample]  # global row -> sample (padding rows absent)
    tokens: np.ndarray | None  # this process's rows, [B_local, T] int32 (dropped once dispatched)
    lengths: np.ndarray | None
    real_tokens: int
    dispatched_at: float = 0.0


def sample_record(sample: Sample, row_arrays: dict[str, np.ndarray], positions: str):
    """``(sample_meta, arrays)`` for StoreWriter.add. ``row_arrays[hook]`` is this sample's row of
    the batch: ``[T, D]`` for ``all``, ``[1, D]`` for ``last``."""
    n = int(sample.token_ids.shape[0])
    sl = slice(0, n) if positions == "all" else slice(n - 1, n)
    m = sl.stop - sl.start
    arrays = {hook: a[:m] for hook, a in row_arrays.items()}
    arrays["position"] = np.arange(sl.start, sl.stop, dtype=np.int32)
    arrays["token_id"] = sample.token_ids[sl]
    arrays["grid"] = sample.grid[sl]
    arrays["row"] = sample.row[sl]
    arrays["col"] = sample.col[sl]
    meta = {
        "key": sample.key,
        "task_id": sample.task_id,
        "test_index": sample.test_index,
        "augmentation": sample.augmentation.to_json(),
        "prompt_tokens": n,
    }
    return meta, arrays


def write_batch(writer, work: BatchWork, host: dict[str, list[tuple[slice, np.ndarray]]], positions: str) -> tuple[int, int]:
    """Add every sample of this process's rows; returns (samples, stored tokens)."""
    n_samples = n_tokens = 0
    hooks = list(host)
    pieces = host[hooks[0]]
    for p, (rows, _) in enumerate(pieces):
        for g in range(rows.start, rows.stop):
            sample = work.samples.get(g)
            if sample is None:
                continue  # a padding row
            r = g - rows.start
            meta, arrays = sample_record(sample, {h: host[h][p][1][r] for h in hooks}, positions)
            writer.add(meta, arrays)
            crash_point("sample-added")
            n_samples += 1
            n_tokens += int(arrays["token_id"].shape[0])
    return n_samples, n_tokens


# -- the crash test hook's points inside a shard commit ---------------------------------------


def instrument_for_crash_tests(writer) -> None:
    """With ARCLENS_TEST_CRASH_AT set, add the ``shard-writing`` and ``shard-written`` points to a
    StoreWriter (crashpoints.py). Wraps the writer's shard publication step; a test asserts that
    the process really died there, so a renamed internal fails loudly rather than silently."""
    import os

    if not os.environ.get(CRASH_ENV):
        return
    import arclens.store.writer as store_writer

    publish = writer._publish_shard
    original_write_shard = store_writer.write_shard

    def write_shard_then_die_midway(f, *args, **kwargs):
        return original_write_shard(_Tripwire(f), *args, **kwargs)

    def instrumented(shard_rel, meta, chunks):
        store_writer.write_shard = write_shard_then_die_midway
        try:
            result = publish(shard_rel, meta, chunks)
        finally:
            store_writer.write_shard = original_write_shard
        crash_point("shard-written")
        return result

    writer._publish_shard = instrumented
    writer.publish_threads = 0  # the crash points swap a module global: publish one shard at a time


class _Tripwire:
    """A file wrapper that reaches the ``shard-writing`` point after the first bytes (the header)
    are on disk, so a kill there leaves a partly written shard behind."""

    def __init__(self, f):
        self._f = f
        self._writes = 0

    def write(self, data):
        n = self._f.write(data)
        self._writes += 1
        if self._writes == 2:
            self._f.flush()
            crash_point("shard-writing")
        return n

    def __getattr__(self, name):
        return getattr(self._f, name)
