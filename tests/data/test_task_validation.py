"""Every validation rule, each with its message naming the file, the task and the place."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.tasks import make_task

from arclens.data.loaders import load_tasks
from arclens.data.tasks import as_grid
from arclens.data.validation import GridError, check_grid
from arclens.errors import UserError


def _set(task: dict, path: tuple, value) -> dict:
    node = task
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return task


def _del(task: dict, path: tuple) -> dict:
    node = task
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return task


# (name, how to break a valid task, text the error must contain after "FILE: task t1: ")
CASES = [
    (
        "non-rectangular",
        lambda t: _set(t, ("train", 1, "output"), [[1, 2], [3]]),
        "train[1].output row 1: has 1 cells but row 0 has 2; grid must be rectangular",
    ),
    (
        "value above 9",
        lambda t: _set(t, ("train", 0, "input"), [[1, 2], [12, 0]]),
        "train[0].input row 1 col 0: value 12 is outside 0-9",
    ),
    (
        "negative value",
        lambda t: _set(t, ("test", 0, "input"), [[-1]]),
        "test[0].input row 0 col 0: value -1 is outside 0-9",
    ),
    (
        "float value",
        lambda t: _set(t, ("test", 0, "output"), [[1.5]]),
        "test[0].output row 0 col 0: expected an int 0-9, got float 1.5",
    ),
    (
        "boolean value",
        lambda t: _set(t, ("train", 0, "input"), [[True]]),
        "train[0].input row 0 col 0: expected an int 0-9, got a boolean True",
    ),
    (
        "31 rows",
        lambda t: _set(t, ("train", 0, "output"), [[1]] * 31),
        "train[0].output: grid is 31x1; each side must be 1..30",
    ),
    (
        "31 columns",
        lambda t: _set(t, ("test", 0, "input"), [[0] * 31] * 2),
        "test[0].input: grid is 2x31; each side must be 1..30",
    ),
    (
        "no rows",
        lambda t: _set(t, ("train", 0, "input"), []),
        "train[0].input: grid has no rows; each side must be 1..30",
    ),
    (
        "empty row",
        lambda t: _set(t, ("train", 0, "input"), [[]]),
        "train[0].input row 0: row is empty; each side must be 1..30",
    ),
    (
        "grid is a string",
        lambda t: _set(t, ("train", 0, "input"), "123"),
        "train[0].input: expected a list of rows, got a string",
    ),
    (
        "row is a number",
        lambda t: _set(t, ("train", 0, "input"), [1, 2]),
        "train[0].input row 0: expected a list of ints, got int",
    ),
    (
        "empty train",
        lambda t: _set(t, ("train",), []),
        "'train' is empty; a task needs at least one train example",
    ),
    (
        "empty test",
        lambda t: _set(t, ("test",), []),
        "'test' is empty; a task needs at least one test example",
    ),
    ("missing train", lambda t: _del(t, ("train",)), "missing 'train' list"),
    (
        "train not a list",
        lambda t: _set(t, ("train",), {"input": [[1]]}),
        "'train' must be a list of examples, got an object",
    ),
    (
        "train output missing",
        lambda t: _del(t, ("train", 1, "output")),
        "train[1]: missing 'output'; every train example needs one",
    ),
    ("test input missing", lambda t: _del(t, ("test", 0, "input")), "test[0]: missing 'input'"),
    (
        "example not an object",
        lambda t: _set(t, ("train", 0), [[[1]], [[2]]]),
        "train[0]: expected an object with 'input' and 'output', got a list",
    ),
]


@pytest.mark.parametrize("name,breaker,expected", CASES, ids=[c[0] for c in CASES])
def test_each_rule_names_file_task_and_place(write_json, name, breaker, expected):
    tasks = {"t0": make_task(0), "t1": breaker(make_task(1)), "t2": make_task(2)}
    path = write_json("challenges.json", tasks)
    with pytest.raises(UserError) as err:
        load_tasks(path)
    assert str(err.value) == f"{path}: task t1: {expected}"


def test_task_that_is_not_an_object(write_json):
    path = write_json("c.json", {"t1": [1, 2]})
    with pytest.raises(
        UserError, match=r"c\.json: task t1: expected an object with 'train' and 'test', got a list"
    ):
        load_tasks(path)


@pytest.mark.parametrize("bad_id", ["a/b", "with space", ""])
def test_task_ids_that_would_break_sample_keys(tmp_path, bad_id):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"task_id": bad_id, **make_task(0)}) + "\n")
    with pytest.raises(UserError, match="task id .* is not valid"):
        load_tasks(str(path))


def test_jsonl_errors_name_the_line(tmp_path):
    path = tmp_path / "t.jsonl"
    bad = make_task(1)
    bad["test"][0]["input"] = [[1, 2], [3]]
    path.write_text(
        json.dumps({"task_id": "ok", **make_task(0)}) + "\n" + json.dumps({"task_id": "bad", **bad}) + "\n"
    )
    with pytest.raises(UserError) as err:
        load_tasks(str(path))
    assert (
        str(err.value)
        == f"{path} line 2: task bad: test[0].input row 1: has 1 cells but row 0 has 2; grid must be rectangular"
    )


# ---- check_grid on its own, with generated grids ------------------------------------------------

grids = st.integers(1, 30).flatmap(
    lambda w: st.lists(st.lists(st.integers(0, 9), min_size=w, max_size=w), min_size=1, max_size=30)
)


@settings(max_examples=60, deadline=None)
@given(grids)
def test_every_valid_grid_passes_and_round_trips(grid):
    assert check_grid(grid) == as_grid(grid)
    assert check_grid(np.array(grid, dtype=np.int64).tolist()) == as_grid(grid)


@settings(max_examples=60, deadline=None)
@given(grids, st.data(), st.sampled_from([10, 11, 99, -1, -7]))
def test_one_bad_cell_is_found_where_it_is(grid, data, bad):
    r = data.draw(st.integers(0, len(grid) - 1))
    c = data.draw(st.integers(0, len(grid[0]) - 1))
    grid[r][c] = bad
    with pytest.raises(GridError) as err:
        check_grid(grid)
    assert err.value.where == f"row {r} col {c}"
    assert f"value {bad} is outside 0-9" in str(err.value)
    assert not err.value.oversized


def test_oversized_flag_only_for_side_over_30():
    with pytest.raises(GridError) as err:
        check_grid([[1] * 31] * 31)
    assert err.value.oversized
    with pytest.raises(GridError) as err:  # a bad value wins over the size: the grid is malformed
        check_grid([[1] * 31] * 30 + [[12] * 31])
    assert not err.value.oversized


def test_numpy_integers_are_accepted():
    assert check_grid([[np.int64(3), np.uint8(9)]]) == ((3, 9),)
