"""Work units: fixed chunks of the sorted task list, or the files of `arclens streams`."""

from __future__ import annotations

import json
import types

from arclens.data.loaders import load_tasks
from arclens.data.streams import write_streams
from arclens.distributed.extract_workers import units_for
from arclens.distributed.workers import stream_units


def _tasks(path, n):
    grid = [[1, 2], [3, 4]]
    path.write_text(json.dumps({f"id{i:02d}": {"train": [{"input": grid, "output": grid}], "test": [{"input": grid}]}
                                for i in range(n)}))
    return load_tasks(str(path))


def test_fixed_chunks_cover_every_task_once(tmp_path, monkeypatch):
    tasks = _tasks(tmp_path / "t.json", 10)
    monkeypatch.setenv("ARCLENS_TASKS_PER_UNIT", "4")
    units = units_for(types.SimpleNamespace(tasks=tasks, tasks_source=str(tmp_path / "t.json")))
    assert list(units) == ["tasks-000000-000004", "tasks-000004-000008", "tasks-000008-000010"]
    assert [t.task_id for ts in units.values() for t in ts] == sorted(t.task_id for t in tasks)


def test_streams_folder_gives_one_unit_per_stream(tmp_path):
    tasks = _tasks(tmp_path / "t.json", 7)
    write_streams(tasks, 3, str(tmp_path / "streams"))
    assert sorted(stream_units(str(tmp_path / "streams"))) == ["stream_000", "stream_001", "stream_002"]
    assert stream_units(str(tmp_path / "t.json")) is None
    units = units_for(types.SimpleNamespace(tasks=tasks, tasks_source=str(tmp_path / "streams")))
    ids = [t.task_id for ts in units.values() for t in ts]
    assert sorted(ids) == sorted(t.task_id for t in tasks) and len(ids) == len(set(ids))
