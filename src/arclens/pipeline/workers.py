"""`arclens extract --num-workers N`: one ExtractJob, claimed unit after claimed unit.

The model is loaded, the store opened and the capture function compiled once; then the worker
loops over the units it claims (distributed/claims.py). For each unit the job re-reads the store's
index (another worker may have committed part of the unit before it was preempted) and extracts
the unit's uncommitted samples. It stops between batches when SIGTERM arrives or its claim is
lost; the writer then commits what is in flight, the unit is released, and the command exits 0.
"""

from __future__ import annotations

import logging
import sys

from arclens.pipeline.progress import RunSummary

log = logging.getLogger(__name__)


def show_worker_events() -> None:
    """Print the claim events (claims, takeovers, releases) on stderr: a fleet operator reads them
    in each VM's log. Leaves an existing logging setup alone."""
    for name in ("arclens.distributed", "arclens.pipeline.workers", "arclens.pipeline.job"):
        logger = logging.getLogger(name)
        if logger.hasHandlers():  # the CLI's handler on "arclens", or the caller's own setup
            logger.setLevel(logging.INFO)
            continue
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s arclens worker: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def run_worker(job, tasks) -> RunSummary:
    """Run ``job`` as independent worker ``settings.worker`` over ``tasks`` (all of the fleet's)."""
    from arclens.distributed.units import shared_plan
    from arclens.distributed.workers import run_with_workers
    from arclens.pipeline.settings import DEFAULT_TASKS_PER_UNIT
    from arclens.store.format import writer_name

    show_worker_events()
    w, s = job.settings.worker, job.settings.store
    job.open_store(tasks)  # metadata.json first: a worker with other settings is refused before anything else
    units = shared_plan(s.dest, tasks, s.tasks_source, w.tasks_per_unit, default=DEFAULT_TASKS_PER_UNIT).units
    name = s.writer or writer_name(job.runtime.process_id, f"w{'' if w.worker_id is None else w.worker_id}")
    summary = RunSummary()

    def extract_unit(unit: str, unit_tasks: list, lease) -> bool:
        result = job.run(unit_tasks, lease=lease, writer=name)
        if result.lease_lost:
            log.warning("unit %s: claim lost mid-unit; its next holder resumes it from the index", unit)
        summary.add(result)
        return result.complete

    with job.signal_handlers():
        outcome = run_with_workers(
            s.dest, units, extract_unit, worker=name, worker_id=w.worker_id, num_workers=w.num_workers,
            ttl_s=w.claim_ttl_s, stop=job.stop.is_set, runtime=job.runtime, idle_timeout_s=w.idle_exit_s,
        )
    summary.compile_s = job.runner.compile_seconds
    summary.stopped_by = job.stop.signal_name
    log.info("worker %s: finished units %s, released %s", name, outcome.done_here, outcome.released)
    return summary
