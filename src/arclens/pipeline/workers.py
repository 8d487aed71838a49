"""`arclens extract --num-workers N`: one ExtractJob, claimed unit after claimed unit.

The model is loaded, the store opened and the capture function compiled once; then the worker
goes round after round (docs/SCALING.md section 4):

1. **Stop?** ``job.should_stop()``: the job's one stop request (SIGTERM, or in a multi-process
   worker jax's preemption sync point, at a step id that keeps rising across rounds and batches).
2. **Claim.** Process 0 looks at the board once (distributed/claims.py) and broadcasts what every
   process does this round: a unit it just claimed, "wait" (every unit left is held by a live
   worker: poll again after ttl/5, or leave after ``--idle-exit``), or "done".
3. **Extract.** ``job.run(unit tasks, lease=...)`` re-reads the store's index (another worker may
   have committed part of the unit before it was preempted) and extracts the rest. Every process
   stops at the same batch when the job stops or the claim is lost, and nothing is committed once
   the claim is lost (checked before each commit; in a multi-process worker process 0 checks and
   answers the others, distributed/coordination.py).
4. **Finish.** Complete on every process: process 0 marks the unit done. Otherwise it releases
   the unit (others may take it at once), unless the claim was lost (another worker holds it).

On a stop the worker exits 0 after committing what it had dispatched and releasing its unit.
"""

from __future__ import annotations

import logging
import sys
import time
from itertools import count

from arclens.pipeline.progress import RunSummary

log = logging.getLogger(__name__)

WAIT, DONE, GAVE_UP = "wait", "done", "gave-up"  # what process 0 says in a round without a unit


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
    """Run ``job`` as independent worker ``job.settings.worker`` over ``tasks`` (the fleet's)."""
    from arclens.distributed.claims import WorkerClaims, preferred_order
    from arclens.distributed.coordination import Coordinator, SharedLease
    from arclens.distributed.units import shared_plan
    from arclens.pipeline.settings import DEFAULT_TASKS_PER_UNIT
    from arclens.store.format import writer_name

    show_worker_events()
    w, s, runtime = job.settings.worker, job.settings.store, job.runtime
    job.open_store(tasks)  # metadata.json first: a worker with other settings is refused before anything else
    units = shared_plan(s.dest, tasks, s.tasks_source, w.tasks_per_unit, default=DEFAULT_TASKS_PER_UNIT).units
    ids = list(units)
    name = s.writer or writer_name(runtime.process_id, f"w{'' if w.worker_id is None else w.worker_id}")
    coordinator = Coordinator(runtime, prefix="arclens/worker")  # the same keys on every process
    claims = WorkerClaims(s.dest, ids, name, w.claim_ttl_s, stop=job.stop.is_set) if runtime.is_leader else None
    order = preferred_order(ids, w.worker_id, w.num_workers)
    summary, done_here, released = RunSummary(), [], []
    idle_since = time.monotonic()
    with job.signal_handlers():
        for round_no in count():
            if job.should_stop():
                break
            lease = None
            if claims is not None:
                lease, todo = claims.poll(order)
                said = lease.unit if lease is not None else DONE if not todo else WAIT
                if said == WAIT and w.idle_exit_s is not None and time.monotonic() - idle_since > w.idle_exit_s:
                    log.warning("worker %s: nothing to claim for %.0fs; leaving %d unit(s) held by others: %s",
                                name, w.idle_exit_s, len(todo), ", ".join(todo[:5]))
                    said = GAVE_UP
            said = coordinator.broadcast(coordinator.key("round", round_no), said if claims is not None else None)
            if said in (DONE, GAVE_UP):
                break
            if said == WAIT:
                wait = claims.poll_s if claims is not None else 0.0
                if claims is not None and w.idle_exit_s is not None:
                    wait = min(wait, max(0.05, idle_since + w.idle_exit_s - time.monotonic()))
                _sleep(wait, job)
                continue
            shared = lease
            if runtime.multi_process:
                shared = SharedLease(coordinator, said, lease, coordinator.key("unit", round_no),
                                     answer_within_s=w.claim_ttl_s / 2)
            try:
                result = job.run(units[said], lease=shared, writer=name)  # complete: the same on every process
            except BaseException:
                if lease is not None:
                    claims.finish(lease, complete=False)  # others may take it at once
                raise
            finally:
                if shared is not lease:
                    shared.close()  # every process is past its commits for the unit (run's last gather)
            complete = result.complete
            if result.lease_lost:
                log.warning("unit %s: claim lost mid-unit; its next holder resumes it from the index", said)
            if lease is not None:
                outcome = claims.finish(lease, complete)
                {"done": done_here, "released": released}.get(outcome, []).append(said)
            summary.add(result)
            idle_since = time.monotonic()
    summary.compile_s = job.runner.compile_seconds
    summary.stopped_by = job.stop.signal_name
    if runtime.is_leader:
        log.info("worker %s: finished units %s, released %s", name, done_here, released)
    return summary


def _sleep(seconds: float, job) -> None:
    """Wait before the next round; a stop request (single process) cuts it short. In a
    multi-process worker process 0 waits and the others wait for its next broadcast."""
    deadline = time.monotonic() + seconds
    while not job.stop.is_set() and (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 0.2))
