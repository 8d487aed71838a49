"""`arclens extract --worker-id I --num-workers N`: the extract pipeline, one claimed unit at a time.

The model is loaded, the store opened and the capture function compiled once; then the worker
loops over the units it claims (workers.py). For each unit it re-reads the store's index (another
worker may have committed part of the unit before it was preempted), runs the pipeline's stages
over the unit's uncommitted samples, and commits them. It stops between batches when SIGTERM
arrives or its lease is lost; the writer then commits what is in flight, the unit is released, and
the command exits 0.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import sys

from arclens.distributed.workers import (
    DEFAULT_TASKS_PER_UNIT,
    ENV_TASKS_PER_UNIT,
    _env_number,
    run_with_workers,
    stream_units,
    task_units,
    worker_slot,
)

log = logging.getLogger(__name__)


def show_worker_events() -> None:
    """Print this package's INFO log lines (claims, takeovers, releases, replicated dimensions) on
    stderr: a fleet operator reads them in each VM's log. Leaves an existing logging setup alone."""
    logger = logging.getLogger("arclens.distributed")
    if logger.hasHandlers():  # the CLI's handler on "arclens", or the caller's own setup
        logger.setLevel(logging.INFO)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s arclens worker: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def worker_writer_name(worker_id: int | None, runtime) -> str:
    """Unique per process: several workers may share a host (and a hostname after a VM is
    recreated), and a writer name must never be used by two live processes at once."""
    host = socket.gethostname().split(".")[0] or "host"
    who = f"w{worker_id}" if worker_id is not None else "w"
    return f"{host}-{who}-p{runtime.process_id}-{os.getpid()}"


def units_for(settings) -> dict[str, list]:
    """``{unit id: [Task, ...]}``: the files of an `arclens streams` folder, else fixed chunks of the
    sorted task list (ARCLENS_TASKS_PER_UNIT tasks each)."""
    by_id = {t.task_id: t for t in settings.tasks}
    streams = stream_units(settings.tasks_source)
    if streams is not None:
        from arclens.data.loaders import load_tasks

        return {unit: [by_id[t.task_id] for t in load_tasks(path) if t.task_id in by_id]
                for unit, path in streams.items()}
    per_unit = _env_number(ENV_TASKS_PER_UNIT, int, DEFAULT_TASKS_PER_UNIT)
    return {unit: [by_id[i] for i in ids] for unit, ids in task_units(list(by_id), per_unit).items()}


def extract_as_worker(settings, runtime, args, *, progress: bool = True, idle_timeout_s: float | None = None):
    """Run ``arclens extract`` as independent worker ``args.worker_id`` of ``args.num_workers``."""
    import jax

    from arclens.distributed.mesh import make_mesh
    from arclens.distributed.runtime import barrier
    from arclens.pipeline import extract as ex
    from arclens.pipeline.device import CaptureRunner
    from arclens.pipeline.progress import ProgressReporter, RunSummary
    from arclens.pipeline.rendering import (
        DEFAULT_WINDOW_SAMPLES,
        Renderer,
        default_workers,
        pending_work,
        windows,
    )
    from arclens.pipeline.stopping import StopRequest
    from arclens.pipeline.writing import instrument_for_crash_tests
    from arclens.prompts import load_tokenizer
    from arclens.store.writer import StoreWriter, committed_keys, open_or_create_store

    show_worker_events()
    worker_id, num_workers = worker_slot(args)
    s = settings
    if getattr(args, "writer", None) is None:
        s = dataclasses.replace(s, writer_name=worker_writer_name(worker_id, runtime))
    units = units_for(s)

    tokenizer = load_tokenizer(str(s.model_path))
    mesh = make_mesh(s.mesh_spec)
    params = ex.load_model_params(s, mesh)
    open_or_create_store(s.dest, ex.store_metadata(s))
    runner = CaptureRunner(params, s.config, s.hooks, s.positions, s.dtype, mesh)
    per_device = s.tokens_per_batch or ex.DEFAULT_TOKENS_PER_BATCH.get(jax.default_backend(),
                                                                       ex.DEFAULT_TOKENS_PER_BATCH_ACCEL)
    dp = runner.data_parallel()
    writer = StoreWriter(s.dest, s.writer_name, s.shard_bytes)
    instrument_for_crash_tests(writer)
    summary = RunSummary()
    stop = StopRequest()

    class UnitStop(StopRequest):
        """Stops the stages on SIGTERM (the shared flag) or when this unit's lease is lost."""

        def __init__(self, lease):
            super().__init__()
            self.lease = lease

        def is_set(self) -> bool:
            if not (self.event.is_set() or stop.is_set()) and not self.lease.held():
                self.request("lost claim")
            return self.event.is_set() or stop.is_set()

    def extract_unit(unit: str, tasks: list, lease) -> bool:
        committed = committed_keys(s.dest)
        barrier(f"arclens-unit-{unit}", runtime)  # every process listed the same commits
        work = pending_work(tasks, s.prompt, committed)
        summary.skipped_committed += work.skipped
        unit_stop = UnitStop(lease)
        if work.n_samples:
            log.info("unit %s: %d samples to extract (%d already committed)", unit, work.n_samples, work.skipped)
            renderer = Renderer(s.model_path, tokenizer, s.prompt, work.todo_keys, default_workers(work.n_samples))
            reporter = ProgressReporter(work.n_samples, enabled=progress and runtime.is_leader)
            try:
                ex._run_stages(
                    s, runtime, runner, renderer, windows(work.tasks, s.prompt, DEFAULT_WINDOW_SAMPLES),
                    writer, reporter, unit_stop, summary, tokens_per_batch=per_device * dp, row_multiple=dp,
                )
            finally:
                reporter.close()
                renderer.close()
        if unit_stop.event.is_set() and not stop.is_set():
            log.warning("unit %s: claim lost mid-unit; its next holder resumes it from the index", unit)
        # The stages' writer flushed at the end: every sample of the unit is committed unless stopped.
        return not (stop.is_set() or unit_stop.event.is_set())

    try:
        with stop.installed() if not runtime.multi_process else ex._no_handlers():
            outcome = run_with_workers(
                s.dest, units, extract_unit, worker=s.writer_name, worker_id=worker_id, num_workers=num_workers,
                stop=stop.is_set, runtime=runtime, idle_timeout_s=idle_timeout_s,
            )
    finally:
        runner.close()
    summary.shards = len(writer.commits)
    summary.bytes = sum(c.bytes for c in writer.commits)
    summary.compile_s = runner.compile_seconds
    summary.stopped_by = summary.stopped_by or stop.signal_name
    log.info("worker %s: finished units %s, released %s", s.writer_name, outcome.done_here, outcome.released)
    return summary
