"""``ExtractJob``: the one public extract job (docs/EXTRACT.md, docs/ARCHITECTURE.md "pipeline").

It owns what every use of the capture path needs once: the tokenizer, the mesh, the parameters,
the jitted capture runner and one stop request. Then:

- ``run(tasks)`` extracts into the store of ``settings.store`` (what ``arclens extract`` runs; a
  worker runs it once per claimed unit, pipeline/workers.py);
- ``device_batches(tasks)`` yields the same batches with their captures left on the device, for
  consumers that train or measure on the fly (SAE training from the model, feature statistics).

Both go through one schedule, a pure function of the sample set (schedule.py), so a batch of
``device_batches`` holds exactly what ``run`` stores for it, and a resumed run computes every
sample in the batch an uninterrupted run would.

Stopping: SIGTERM / Ctrl-C set the job's stop request (single process), or jax's preemption sync
point does (multi-process, where SIGTERM belongs to jax's preemption notifier). Both loops ask
``should_stop`` before every batch, with one step counter that keeps rising for the life of the
job (the sync point requires ids that rise from a common start on every process).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import jax

from arclens.data.tasks import Task
from arclens.distributed.coordination import Coordinator
from arclens.distributed.runtime import Runtime
from arclens.pipeline.progress import ProgressReporter, RunSummary
from arclens.pipeline.schedule import Planner, scheduled_batches, task_keys, windows
from arclens.pipeline.settings import CaptureSettings, ExtractSettings
from arclens.pipeline.stopping import StopRequest
from arclens.prompts import Sample

log = logging.getLogger(__name__)

# Default token budget per device and batch. On an accelerator, 32k tokens of a 0.5B model keep
# the matmuls large; on CPU smaller batches keep the stages overlapping in tests and demos.
DEFAULT_TOKENS_PER_BATCH = {"cpu": 8192}
DEFAULT_TOKENS_PER_BATCH_ACCEL = 32768


@dataclass
class DeviceBatch:
    """One batch of ``ExtractJob.device_batches``, on the device."""

    index: int  # position in the schedule (after the order_seed permutation of batches)
    captures: dict[str, jax.Array]  # hook -> [B, T, D] global, sharded over "data", in the capture dtype
    valid: jax.Array  # bool [B, T]: real tokens of real rows (padding rows all False)
    lengths: jax.Array  # int32 [B]; 0 for padding rows
    samples: dict[int, Sample]  # global row -> Sample, for the rows this process feeds


class ExtractJob:
    """Loads the model once; ``run`` and ``device_batches`` may then be called any number of
    times. Use as a context manager, or call ``close``."""

    def __init__(self, settings: ExtractSettings | CaptureSettings, runtime: Runtime | None = None):
        import jax.numpy as jnp

        from arclens.distributed.mesh import make_mesh
        from arclens.model.loading import load_params
        from arclens.pipeline.device import CaptureRunner
        from arclens.prompts import load_tokenizer

        if isinstance(settings, CaptureSettings):
            settings = ExtractSettings(capture=settings)
        self.settings = settings
        self.capture = c = settings.capture
        self.runtime = runtime or Runtime(jax.process_index(), jax.process_count())
        self.tokenizer = load_tokenizer(str(c.model_path))
        self.mesh = make_mesh(c.mesh)
        dtype = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}[c.dtype]
        self.params = load_params(c.model_path, c.config, dtype, mesh=self.mesh)  # a broken checkpoint fails here
        self.runner = CaptureRunner(self.params, c.config, c.hooks, c.positions, c.dtype, self.mesh,
                                    memory_kind=c.capture_memory)
        per_device = c.tokens_per_batch or DEFAULT_TOKENS_PER_BATCH.get(jax.default_backend(),
                                                                        DEFAULT_TOKENS_PER_BATCH_ACCEL)
        dp = self.runner.data_parallel()
        self.planner = Planner(tokens_per_batch=per_device * dp, max_shapes=c.max_shapes, row_multiple=dp)
        self.coordinator = Coordinator(self.runtime, prefix="arclens/job")
        self.stop = StopRequest()
        self.step = 0  # rising for the life of the job: the preemption sync point's step id
        self.stopped_for: str | None = None
        self.store = None  # StoreHandle once open_store ran

    # -- stopping ------------------------------------------------------------------------------

    def should_stop(self, lease=None) -> bool:
        """Asked before every batch (and by the worker loop between units), on every process at
        the same steps: True once the job must stop, or the ``lease`` (a worker's claim) is lost.
        ``lease.held_at(step)`` gives the same answer on every process (claims.Lease,
        coordination.SharedLease). ``stopped_for`` says which: "stop", "lease" or None."""
        step = self.step
        self.step += 1
        self.stopped_for = None
        if self.runtime.multi_process:
            # Every process must stop at the same batch or the others hang in the next SPMD step.
            # jax's preemption sync point answers the same for all processes at a given step.
            try:
                from jax.experimental import multihost_utils

                if multihost_utils.reached_preemption_sync_point(step):
                    self.stop.request("SIGTERM (preemption sync point)")
            except Exception as err:  # noqa: BLE001 - no preemption service in this jax.distributed setup
                _warn_once(f"no graceful stop across processes: jax preemption sync point unavailable ({err})")
        if self.stop.is_set():
            self.stopped_for = "stop"
        elif lease is not None and not lease.held_at(step):
            self.stopped_for = "lease"
        return self.stopped_for is not None

    def signal_handlers(self):
        """SIGTERM / Ctrl-C set ``self.stop`` for the duration (single process; a multi-process
        job leaves SIGTERM to jax's preemption notifier, which ``should_stop`` consults)."""
        return nullcontext() if self.runtime.multi_process else self.stop.installed()

    # -- device batches ------------------------------------------------------------------------

    def device_batches(self, tasks: Sequence[Task], *, order_seed: int | None = None,
                       start: int = 0, own_stop: bool = True) -> Iterator[DeviceBatch]:
        """Every sample of ``tasks`` in exactly one batch, in schedule order (``order_seed``:
        permuted), from position ``start`` on; batches before ``start`` are never computed. The
        captures stay on the device. Ends between batches on a stop request.

        ``own_stop=False``: the consumer stops by itself (SAE training stops at a step, then
        closes this iterator): the job installs no signal handlers and never ends the stream
        early, so the stream is always the whole pass."""
        from arclens.pipeline.rendering import Renderer, default_workers
        from arclens.pipeline.stages import on_device

        c = self.capture
        if start < 0:
            raise ValueError(f"start must be 0 or more, got {start}")
        wins = windows(list(tasks), c.prompt, c.window_samples)
        n = sum(len(task_keys(t, c.prompt)) for t in tasks)
        renderer = Renderer(c.model_path, self.tokenizer, c.prompt, default_workers(n, c.render_workers))

        def scheduled(on_plan):
            return scheduled_batches(renderer, wins, self.planner, order_seed=order_seed, on_plan=on_plan)

        gate = self.should_stop if own_stop else (lambda: False)
        try:
            with self.signal_handlers() if own_stop else nullcontext():
                for work, out in on_device(self.runner, scheduled, start=start, gate=gate,
                                           tokens_per_batch=self.planner.tokens_per_batch):
                    yield DeviceBatch(work.index, out.captures, out.valid, out.lengths, work.samples)
        finally:
            renderer.close()

    # -- into the store ------------------------------------------------------------------------

    def open_store(self, tasks: Sequence[Task]):
        """Create the store's ``metadata.json`` for this task set (create-only), or open an existing
        store with equal settings (else UserError naming each difference); idempotent."""
        from arclens.store.writer import open_or_create_store

        s = self._store_settings()
        self.store = open_or_create_store(s.dest, self.metadata(tasks))
        return self.store

    def metadata(self, tasks: Sequence[Task]) -> dict:
        """The store metadata of this job over ``tasks`` (SPEC.md section 3; store/metadata.py)."""
        from arclens.model.loading import is_random_checkpoint, is_toy_checkpoint
        from arclens.store.metadata import model_section, tasks_section

        c = self.capture
        source = self.settings.store.tasks_source if self.settings.store is not None else ""
        model = model_section(c.model, c.config.to_json(), c.dtype, fingerprint=c.model_fingerprint,
                              random_weights=is_random_checkpoint(c.model_path),
                              toy_weights=is_toy_checkpoint(c.model_path))
        return {"model": model, "hooks": [h.name for h in c.hooks], "dtype": c.dtype, "d_model": c.config.d_model,
                "positions": c.positions, "prompt": c.prompt.to_json(),
                "tasks": tasks_section(source, tasks, c.prompt.with_answer)}

    def run(self, tasks: Sequence[Task], *, lease=None, writer: str | None = None,
            progress: bool = True) -> RunSummary:
        """Extract every sample of ``tasks`` not committed yet into the store; stop between batches
        on a stop request (or when ``lease`` is lost), committing what was dispatched. Opens the
        store for ``tasks`` unless ``open_store`` ran (a worker opens it for the whole task set)."""
        from arclens.pipeline.rendering import Renderer, default_workers
        from arclens.pipeline.stages import to_store
        from arclens.store.format import writer_name
        from arclens.store.writer import StoreWriter, committed_keys

        s, c = self._store_settings(), self.capture
        if self.store is None:
            self.open_store(tasks)
        committed = frozenset(committed_keys(s.dest))
        self.coordinator.barrier("resume")  # every process listed the same commits before anyone writes
        wins = windows(list(tasks), c.prompt, c.window_samples)
        keys = [[k for t in w for k in task_keys(t, c.prompt)] for w in wins]
        todo = sum(k not in committed for ks in keys for k in ks)
        summary = RunSummary(skipped_committed=sum(map(len, keys)) - todo)
        if not todo:
            summary.complete = True
            if lease is None and self.runtime.is_leader:
                print(f"arclens extract: all {summary.skipped_committed} samples are already in {s.dest}; "
                      "nothing to do", file=sys.stderr)
            return summary
        if lease is not None:
            log.info("unit %s: %d samples to extract (%d already committed)", lease.unit, todo,
                     summary.skipped_committed)
        needed = [any(k not in committed for k in ks) for ks in keys]
        renderer = Renderer(c.model_path, self.tokenizer, c.prompt, default_workers(todo, c.render_workers))
        reporter = ProgressReporter(todo, enabled=progress and self.runtime.is_leader, compiling=self.runner.compiling)
        name = writer or s.writer or writer_name(self.runtime.process_id)

        def scheduled(on_plan):
            return scheduled_batches(renderer, wins, self.planner, needed=needed, on_plan=on_plan)

        # A worker commits only while its claim is held: checked right before every commit.
        guard = lease.held if lease is not None else None
        self.stopped_for = None
        try:
            with self.signal_handlers(), StoreWriter(s.dest, name, s.shard_bytes, publish_threads=s.publish_threads,
                                                     commit_guard=guard) as store_writer:
                to_store(self.runner, scheduled, store_writer, positions=c.positions, committed=committed,
                         gate=lambda: self.should_stop(lease), reporter=reporter, summary=summary,
                         tokens_per_batch=self.planner.tokens_per_batch)
        finally:
            reporter.close()
            renderer.close()
        commits = store_writer.commits
        summary.shards, summary.bytes = len(commits), sum(x.bytes for x in commits)
        if summary.lease_lost:  # what was added after the claim was lost was never committed
            summary.samples = sum(len(x.samples) for x in commits)
            summary.tokens_stored = sum(x.n_tokens for x in commits)
        summary.compile_s = self.runner.compile_seconds
        summary.stopped_by = self.stop.signal_name
        summary.lease_lost = summary.lease_lost or self.stopped_for == "lease"
        # Each process wrote the rows it reads back, and those are disjoint: together they are
        # every uncommitted sample exactly when the run is complete (also after a late stop).
        # A lost claim is every process's once any saw it: a process whose last commit came after
        # a freeze is refused while the others, done committing before it, never asked again, and
        # processes that disagree here would leave the unit differently (and hang on each other).
        said = [x.split(":") for x in self.coordinator.gather(self.coordinator.key("written", self.step),
                                                               f"{summary.samples}:{int(summary.lease_lost)}")]
        written = sum(int(n) for n, _ in said)
        summary.lease_lost = any(lost == "1" for _, lost in said)
        stopped = self.stop.is_set() or summary.lease_lost
        if not stopped and written != todo:
            # Never report success for a run that silently skipped samples (a rerun would resume them).
            raise RuntimeError(f"extract wrote {written} samples of the {todo} it scheduled")
        summary.complete = written == todo and not summary.lease_lost
        return summary

    def _store_settings(self):
        if self.settings.store is None:
            raise ValueError("this ExtractJob has no store settings (ExtractSettings.store); only device_batches")
        return self.settings.store

    # -- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        self.runner.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_warned: set[str] = set()


def _warn_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        log.warning("%s", msg)
