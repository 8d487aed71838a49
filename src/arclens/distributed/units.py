"""Work units: what a fleet of independent workers claims, and the plan every worker shares.

A unit is a fixed chunk of the sorted task list (``task_units``: ``tasks-000016-000032`` holds the
17th to 32nd task ids), or one file of an ``arclens streams`` folder (``stream_units``). Every
worker must cut the task set the same way, or two workers extract overlapping tasks at the same
time under different unit ids. So the first worker records the plan create-only as
``DEST/units.json`` (``{"tasks_per_unit", "source", "units"}``), and every later worker takes its
``tasks_per_unit`` from there; an explicit ``--tasks-per-unit`` that differs is refused with one
line (UserError, exit 2) before that worker writes anything. Readers of the store ignore the file.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from arclens.errors import UserError
from arclens.store import fs as storefs

PLAN_FILE = "units.json"
PLAN_SCHEME = "arclens-units-v1"


def task_units(task_ids: Sequence[str], tasks_per_unit: int) -> dict[str, list[str]]:
    """Fixed chunks of the sorted task ids: ``{"tasks-000000-000016": [ids...], ...}``."""
    if tasks_per_unit < 1:
        raise UserError(f"--tasks-per-unit: expected a positive number of tasks per unit, got {tasks_per_unit}")
    ids = sorted(task_ids)
    return {
        f"tasks-{start:06d}-{min(start + tasks_per_unit, len(ids)):06d}": ids[start:start + tasks_per_unit]
        for start in range(0, len(ids), tasks_per_unit)
    }


def stream_units(folder: str) -> dict[str, str] | None:
    """The files of an ``arclens streams`` folder as units (``{"stream_003": path}``), or None
    when ``folder`` is not one."""
    if not os.path.isdir(folder) or not os.path.isfile(os.path.join(folder, "streams.json")):
        return None
    files = sorted(f for f in os.listdir(folder) if re.fullmatch(r"stream_\d+\.jsonl", f))
    return {f.removesuffix(".jsonl"): os.path.join(folder, f) for f in files} or None


@dataclass(frozen=True)
class UnitPlan:
    source: str  # "tasks" (fixed chunks) or "streams" (the files of an arclens streams folder)
    tasks_per_unit: int | None  # None for streams
    units: dict[str, list]  # unit id -> its tasks

    def to_json(self) -> dict:
        return {"scheme": PLAN_SCHEME, "source": self.source, "tasks_per_unit": self.tasks_per_unit,
                "units": list(self.units)}


def plan_units(tasks: Sequence, tasks_source: str, tasks_per_unit: int) -> UnitPlan:
    """The units of ``tasks``: the files of an ``arclens streams`` folder, else fixed chunks of the
    sorted task list of ``tasks_per_unit`` tasks each."""
    by_id = {t.task_id: t for t in tasks}
    streams = stream_units(tasks_source)
    if streams is not None:
        from arclens.data.loaders import load_tasks

        units = {unit: [by_id[t.task_id] for t in load_tasks(path) if t.task_id in by_id]
                 for unit, path in streams.items()}
        return UnitPlan("streams", None, units)
    chunks = task_units(list(by_id), tasks_per_unit)
    return UnitPlan("tasks", tasks_per_unit, {unit: [by_id[i] for i in ids] for unit, ids in chunks.items()})


def check_recorded_plan(dest: str, tasks_per_unit: int | None, storage_options: dict | None = None) -> None:
    """Refuse, before anything else happens, a ``--tasks-per-unit`` that differs from the plan the
    store's first worker recorded (``shared_plan`` checks again when it takes the plan)."""
    if tasks_per_unit is None:
        return
    fs, root = storefs.get_fs(dest, storage_options)
    recorded = _read(fs, storefs.join(root, PLAN_FILE), dest)
    if recorded is not None:
        _check_tasks_per_unit(recorded, tasks_per_unit, dest)


def _check_tasks_per_unit(recorded: dict, tasks_per_unit: int | None, dest: str) -> None:
    if tasks_per_unit is not None and recorded.get("tasks_per_unit") not in (None, tasks_per_unit):
        raise UserError(
            f"--tasks-per-unit {tasks_per_unit}: the workers of {dest} cut the tasks into units of "
            f"{recorded['tasks_per_unit']} ({PLAN_FILE}); drop the flag or pass {recorded['tasks_per_unit']}")


def shared_plan(dest: str, tasks: Sequence, tasks_source: str, tasks_per_unit: int | None, *, default: int,
                storage_options: dict | None = None) -> UnitPlan:
    """The fleet's plan: the one recorded in ``DEST/units.json``, else this worker's (``tasks_per_unit``
    or ``default``), recorded create-only. UserError when an explicit ``tasks_per_unit`` differs
    from the recorded one, or the recorded units are not this task set's."""
    fs, root = storefs.get_fs(dest, storage_options)
    path = storefs.join(root, PLAN_FILE)
    for _attempt in range(2):
        recorded = _read(fs, path, dest)
        if recorded is None:
            plan = plan_units(tasks, tasks_source, tasks_per_unit or default)
            body = (json.dumps(plan.to_json(), indent=1) + "\n").encode()
            try:
                storefs.create_only(fs, path, body)
                return plan
            except FileExistsError:
                continue  # another worker recorded its plan first: compare with that one
        _check_tasks_per_unit(recorded, tasks_per_unit, dest)
        plan = plan_units(tasks, tasks_source, recorded.get("tasks_per_unit") or default)
        if list(plan.units) != recorded.get("units") or plan.source != recorded.get("source"):
            raise UserError(f"{dest}/{PLAN_FILE}: its work units are not those of this task set; the store's "
                            "workers were started with other --tasks")
        return plan
    raise AssertionError("unreachable: the plan file exists after a failed create")


def _read(fs, path: str, dest: str) -> dict | None:
    try:
        raw = storefs.read_bytes(fs, path)
    except FileNotFoundError:
        return None
    try:
        plan = json.loads(raw)
        if plan.get("scheme") != PLAN_SCHEME or not isinstance(plan.get("units"), list):
            raise ValueError("not a unit plan")
    except (ValueError, AttributeError) as err:
        raise UserError(f"{dest}/{PLAN_FILE}: unreadable ({err}); it is written by the first worker") from None
    return plan
