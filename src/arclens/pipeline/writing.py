"""From a batch's captures on the host to samples in the store.

Each row of a batch is one sample (or a padding row, skipped). Only the sample's real tokens are
kept (``--positions all``: ``[0, n)``; ``last``: the last prompt token, already gathered on the
device), with its position, token id and grid/row/col roles. The slices are views into the batch
buffer, so nothing is copied here; the store's shard writer copies once, into the file.

A resumed run computes a partly committed batch whole (schedule.py) and writes only the samples
of it that are not committed yet (``BatchWork.committed``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from arclens.crashpoints import crash_point
from arclens.pipeline.batching import Batch
from arclens.prompts import Sample

PAD_TOKEN = 0  # any valid id: padded positions are masked out and never stored


@dataclass
class BatchWork:
    """One scheduled batch on its way through the stages."""

    index: int  # in the job's schedule
    batch: Batch
    samples: dict[int, Sample]  # global row -> sample, for the rows this process feeds (padding rows absent)
    tokens: np.ndarray | None  # this process's rows, [B_local, T] int32 (dropped once dispatched)
    lengths: np.ndarray | None  # [B_local] int32; 0 for padding rows
    real_tokens: int  # real tokens in this process's rows
    committed: frozenset[str] = field(default_factory=frozenset)  # keys of it already in the store
    dispatched_at: float = 0.0


def assemble(batch: Batch, index: int, samples, local: slice, committed: frozenset[str] = frozenset()) -> BatchWork:
    """This process's rows (``local``) of ``batch`` as right-padded int32 arrays."""
    tokens = np.full((local.stop - local.start, batch.seq_len), PAD_TOKEN, np.int32)
    lengths = np.zeros(local.stop - local.start, np.int32)
    mine: dict[int, Sample] = {}
    real = 0
    for g, i in enumerate(batch.rows):
        if local.start <= g < local.stop:
            sample = samples[i]
            n = len(sample.token_ids)
            tokens[g - local.start, :n] = sample.token_ids
            lengths[g - local.start] = n
            mine[g] = sample
            real += n
    return BatchWork(index, batch, mine, tokens, lengths, real, committed)


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
    """Add every sample of this process's rows that is not committed yet; returns (samples,
    stored tokens)."""
    n_samples = n_tokens = 0
    hooks = list(host)
    pieces = host[hooks[0]]
    for p, (rows, _) in enumerate(pieces):
        for g in range(rows.start, rows.stop):
            sample = work.samples.get(g)
            if sample is None or sample.key in work.committed:
                continue  # a padding row, or a sample an earlier run committed
            r = g - rows.start
            meta, arrays = sample_record(sample, {h: host[h][p][1][r] for h in hooks}, positions)
            writer.add(meta, arrays)
            crash_point("sample-added")
            n_samples += 1
            n_tokens += int(arrays["token_id"].shape[0])
    return n_samples, n_tokens
