"""The model source of `arclens features`: activations computed on the fly by the extract job's
device batches (`pipeline.job.ExtractJob.device_batches`), never written anywhere.

Each device batch is ``[B, T, D]`` captures on the device, one sample per row (right-padded to
``T``), and the rendered `prompts.Sample` of every real row. A features batch is that array
reshaped to ``[B * T, D]`` on the device, with the host's per-slot roles filled sample by sample
at slot ``row * T``. A sample's per-token columns are what `arclens extract --positions all`
would store for it (`pipeline.writing.sample_record`): position ``0..n-1``, token id, grid, row
and col in the store's dtypes. So the pass sees the very tokens a store of the same job holds,
in another order (the schedule's, sorted by length, instead of the store's), which only reorders
float sums: the top-K and the quantile draws are ordered by sample key and a hash, never by
arrival (docs/FEATURES.md, "The model source").
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from arclens.features.batch import Batch, BatchBuilder
from arclens.features.sources import Plan, TaskGrids
from arclens.store.format import COLUMNS as COLUMN_DTYPES


class ModelSource:
    """Every sample of ``tasks`` under the job's prompt config, one device batch at a time."""

    def __init__(self, job, tasks: Sequence, hook: str, grids: TaskGrids):
        from arclens.pipeline.schedule import task_keys

        if hook not in {h.name for h in job.capture.hooks}:
            raise ValueError(f"the job does not capture {hook}")
        self.job, self.tasks, self.hook, self.grids = job, list(tasks), hook, grids
        self.plan = Plan.from_keys(k for t in self.tasks for k in task_keys(t, job.capture.prompt))
        self.seen = 0

    @property
    def n_samples(self) -> int:
        return len(self.plan.keys)

    @property
    def n_tokens(self) -> int | None:
        return None  # known once every prompt is rendered; the accumulator then counts in int64

    def batches(self, batch_tokens: int | None = None, ahead: int = 0) -> Iterator[Batch]:
        """The job's own batches: its schedule sets their shapes (``--batch-tokens`` went into
        the job's ``tokens_per_batch``, so ``batch_tokens`` is not used here). ``ahead`` is not
        used either: the job runs in the caller's thread, since it installs signal handlers,
        which only the main thread may do, and its own stages already run ahead of the device. A stop request
        (SIGTERM, Ctrl-C) ends the job between batches; that is an interrupted run, never a
        complete one, so nothing may be written from it."""
        self.seen = 0
        for b in self.job.device_batches(self.tasks):
            yield self._batch(b)
        if self.job.stop.is_set():
            raise KeyboardInterrupt(f"stopped by {self.job.stop.signal_name}")
        if self.seen != self.n_samples:
            raise RuntimeError(f"the extract job gave {self.seen} samples of the {self.n_samples} planned")

    def release(self, batch: Batch) -> None:
        """(Nothing to reuse: a batch's activations are the device's, freed with it.)"""

    def _batch(self, b) -> Batch:
        captures = b.captures[self.hook]
        rows, width, d = captures.shape
        builder = BatchBuilder(rows * width)
        for row, sample in sorted(b.samples.items()):
            n = len(sample.token_ids)
            info = {"key": sample.key, "task_id": sample.task_id, "test_index": int(sample.test_index),
                    "augmentation": sample.augmentation.to_json(), "prompt_tokens": n, "stored_tokens": n}
            columns = {"position": np.arange(n, dtype=COLUMN_DTYPES["position"]),
                       "token_id": np.asarray(sample.token_ids, COLUMN_DTYPES["token_id"])}
            for name in ("grid", "row", "col"):
                columns[name] = np.asarray(getattr(sample, name), COLUMN_DTYPES[name])
            builder.add(row * width, self.plan.rank[sample.key], self.plan.group[sample.key], info, columns,
                        self.grids.sample_cells(info))
            self.seen += 1
        # A reshape on the device: no host copy of the activations. Padding slots keep whatever
        # the model computed there (finite: the capture runs padding rows as one-token rows) and
        # the device step multiplies them by `valid = 0`.
        return builder.build(captures.reshape(rows * width, d))

    def close(self) -> None:
        self.job.close()
