"""The worker loop (pipeline/workers.py) round by round, with a stand-in job whose `run` only
records the units it is given: claims, done markers, release on an error, a released unit taken
at once by the next worker, the idle exit, and the one stop request ending the loop."""

from __future__ import annotations

import types
from contextlib import nullcontext

import pytest

from arclens.distributed.claims import WorkerClaims, read_board
from arclens.distributed.runtime import Runtime
from arclens.pipeline.progress import RunSummary
from arclens.pipeline.settings import StoreSettings, WorkerSettings
from arclens.pipeline.stopping import StopRequest
from arclens.pipeline.workers import run_worker
from arclens.store import fs as storefs

TASKS = [types.SimpleNamespace(task_id=f"t{i}") for i in range(3)]
UNITS = ["tasks-000000-000001", "tasks-000001-000002", "tasks-000002-000003"]


class StandInJob:
    """What run_worker uses of an ExtractJob; ``on_run(unit, job)`` decides each unit's outcome."""

    def __init__(self, dest, on_run, **worker):
        self.settings = types.SimpleNamespace(store=StoreSettings(dest=dest, tasks_source="tasks.json"),
                                              worker=WorkerSettings(num_workers=1, tasks_per_unit=1, **worker))
        self.runtime = Runtime()
        self.stop = StopRequest()
        self.runner = types.SimpleNamespace(compile_seconds=0.0)
        self.on_run, self.calls, self.steps = on_run, [], 0

    def open_store(self, tasks):
        pass

    def signal_handlers(self):
        return nullcontext()

    def should_stop(self, lease=None):
        self.steps += 1
        return self.stop.is_set()

    def run(self, tasks, *, lease, writer):
        unit = lease.unit
        assert lease.held() and [t.task_id for t in tasks] == [f"t{UNITS.index(unit)}"]
        self.calls.append(unit)
        return self.on_run(unit, self) or RunSummary(complete=True)


def _board(dest):
    fs, root = storefs.get_fs(dest)
    return read_board(fs, root)


def test_units_done_released_on_error_taken_at_once_and_idle_exit(tmp_path):
    dest = str(tmp_path / "store")

    def boom_on_the_second(unit, job):
        if unit == UNITS[1]:
            raise RuntimeError("boom")

    a = StandInJob(dest, boom_on_the_second, worker_id=0, claim_ttl_s=30)
    with pytest.raises(RuntimeError, match="boom"):
        run_worker(a, TASKS)
    board = _board(dest)
    assert a.calls == UNITS[:2] and board.done == {UNITS[0]} and board.units[UNITS[1]].released
    # A live "other" holds the third unit; worker b takes the released one at once, then leaves.
    other = WorkerClaims(dest, [UNITS[2]], "other", 30.0)
    held = other.next_unit()
    b = StandInJob(dest, lambda unit, job: None, claim_ttl_s=30, idle_exit_s=0.3)
    summary = run_worker(b, TASKS)
    assert b.calls == [UNITS[1]] and summary.stopped_by is None
    other.finish(held, complete=True)
    assert _board(dest).done == set(UNITS)
    assert b.steps >= 2  # a stop check every round: the step ids keep rising


def test_the_stop_request_ends_the_loop_and_releases_the_unit(tmp_path):
    dest = str(tmp_path / "store")

    def preempted(unit, job):
        job.stop.request("SIGTERM")  # as the signal handler (or the preemption sync point) does
        return RunSummary(complete=False, stopped_by="SIGTERM")

    job = StandInJob(dest, preempted, worker_id=0, claim_ttl_s=30)
    summary = run_worker(job, TASKS)
    board = _board(dest)
    assert job.calls == [UNITS[0]] and summary.stopped_by == "SIGTERM"
    assert board.done == set() and board.units[UNITS[0]].released and set(board.units) == {UNITS[0]}
