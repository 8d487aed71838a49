"""Work units (fixed chunks of the sorted task list, or the files of `arclens streams`) and the
plan the first worker records create-only in the store for every later one."""

from __future__ import annotations

import json

import pytest

from arclens.data.loaders import load_tasks
from arclens.data.streams import write_streams
from arclens.distributed.units import PLAN_FILE, plan_units, shared_plan, stream_units, task_units
from arclens.errors import UserError


def _tasks(path, n):
    grid = [[1, 2], [3, 4]]
    path.write_text(json.dumps({f"id{i:02d}": {"train": [{"input": grid, "output": grid}], "test": [{"input": grid}]}
                                for i in range(n)}))
    return load_tasks(str(path))


def test_fixed_chunks_cover_every_task_once(tmp_path):
    tasks = _tasks(tmp_path / "t.json", 10)
    units = plan_units(tasks, str(tmp_path / "t.json"), 4).units
    assert list(units) == ["tasks-000000-000004", "tasks-000004-000008", "tasks-000008-000010"]
    assert [t.task_id for ts in units.values() for t in ts] == sorted(t.task_id for t in tasks)
    assert task_units([f"t{i:02d}" for i in range(10)][::-1], 4)["tasks-000008-000010"] == ["t08", "t09"]
    with pytest.raises(UserError, match="--tasks-per-unit"):
        task_units(["a"], 0)


def test_streams_folder_gives_one_unit_per_stream(tmp_path):
    tasks = _tasks(tmp_path / "t.json", 7)
    write_streams(tasks, 3, str(tmp_path / "streams"))
    assert sorted(stream_units(str(tmp_path / "streams"))) == ["stream_000", "stream_001", "stream_002"]
    assert stream_units(str(tmp_path / "t.json")) is None
    plan = plan_units(tasks, str(tmp_path / "streams"), 4)
    ids = [t.task_id for ts in plan.units.values() for t in ts]
    assert plan.source == "streams" and plan.tasks_per_unit is None
    assert sorted(ids) == sorted(t.task_id for t in tasks) and len(ids) == len(set(ids))


def test_the_first_worker_records_the_plan_and_later_ones_follow_it(tmp_path):
    tasks = _tasks(tmp_path / "t.json", 10)
    dest = str(tmp_path / "store")
    first = shared_plan(dest, tasks, "t.json", 4, default=16)
    recorded = json.loads((tmp_path / "store" / PLAN_FILE).read_text())
    assert recorded["tasks_per_unit"] == 4 and recorded["units"] == list(first.units)
    before = (tmp_path / "store" / PLAN_FILE).read_bytes()
    assert list(shared_plan(dest, tasks, "t.json", None, default=16).units) == list(first.units)  # no flag: the plan's
    assert list(shared_plan(dest, tasks, "t.json", 4, default=16).units) == list(first.units)  # the same value
    with pytest.raises(UserError, match=r"^--tasks-per-unit 3: the workers of .* cut the tasks into units of 4"):
        shared_plan(dest, tasks, "t.json", 3, default=16)
    with pytest.raises(UserError, match="not those of this task set"):
        shared_plan(dest, tasks[:5], "t.json", None, default=16)
    assert (tmp_path / "store" / PLAN_FILE).read_bytes() == before  # nothing rewritten
