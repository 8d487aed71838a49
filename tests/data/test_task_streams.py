"""`arclens streams`: disjoint, complete, balanced, deterministic, and loadable again."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.tasks import make_task

from arclens.cli import main
from arclens.data.loaders import load_tasks
from arclens.data.streams import assign_streams, stream_file_name, write_streams
from arclens.errors import UserError


@settings(max_examples=80, deadline=None)
@given(st.sets(st.text(min_size=1, max_size=12), min_size=1, max_size=200), st.integers(1, 20), st.randoms())
def test_assignment_is_a_balanced_partition_independent_of_input_order(ids, n, rnd):
    streams = assign_streams(ids, n)
    flat = [t for s in streams for t in s]
    assert len(streams) == n
    assert sorted(flat) == sorted(ids)  # complete and disjoint: every id exactly once
    sizes = [len(s) for s in streams]
    assert max(sizes) - min(sizes) <= 1
    shuffled = list(ids)
    rnd.shuffle(shuffled)
    assert assign_streams(shuffled, n) == streams


def test_streams_of_arc_agi_1_evaluation(tmp_path):
    out = tmp_path / "streams"
    assert (
        main(["streams", "--tasks", "arc-agi-1/evaluation", "--num-streams", "7", "--output-dir", str(out)])
        == 0
    )
    all_tasks = {t.task_id: t for t in load_tasks("arc-agi-1/evaluation")}
    seen = []
    for k in range(7):
        stream = load_tasks(str(out / stream_file_name(k)))  # each stream is a valid task file
        assert len(stream) in (57, 58)  # 400 = 57 * 7 + 1
        for t in stream:
            assert t == all_tasks[t.task_id]  # test outputs travel with the task
        seen += [t.task_id for t in stream]
    assert sorted(seen) == sorted(all_tasks)
    assert not (out / stream_file_name(7)).exists()
    assert load_tasks(str(out)) == sorted(all_tasks.values(), key=lambda t: t.task_id)  # the folder = the union
    manifest = json.loads((out / "streams.json").read_text())
    assert (
        manifest["num_streams"] == 7
        and sum(manifest["counts"]) == 400
        and manifest["source"] == "arc-agi-1/evaluation"
    )

    # deterministic: a second run, from a differently ordered source file, writes the same bytes
    shuffled = tmp_path / "shuffled.jsonl"
    ids = list(all_tasks)
    random.Random(1).shuffle(ids)
    shuffled.write_text("".join(json.dumps({"task_id": i, **all_tasks[i].to_json()}) + "\n" for i in ids))
    again = tmp_path / "again"
    assert main(["streams", "--tasks", str(shuffled), "--num-streams", "7", "--output-dir", str(again)]) == 0
    for k in range(7):
        assert (again / stream_file_name(k)).read_bytes() == (out / stream_file_name(k)).read_bytes()


def _tasks(n):
    from arclens.data.validation import parse_task

    return [parse_task(f"t{i}", make_task(i), "test") for i in range(n)]


def test_more_streams_than_tasks_is_refused(tmp_path):
    with pytest.raises(UserError, match="--num-streams 4 is more than the 3 tasks"):
        write_streams(_tasks(3), 4, str(tmp_path))
    with pytest.raises(UserError, match="--num-streams must be at least 1"):
        write_streams(_tasks(3), 0, str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_stale_streams_from_a_larger_run_are_refused(tmp_path):
    write_streams(_tasks(6), 3, str(tmp_path))
    write_streams(_tasks(6), 3, str(tmp_path))  # the same run again is fine
    with pytest.raises(UserError, match="holds stream_002.jsonl from an earlier run with more streams"):
        write_streams(_tasks(6), 2, str(tmp_path))


def test_cli_user_error_is_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    task = make_task(0)
    task["train"][0]["output"] = [[1, 2], [3]]
    bad.write_text(json.dumps({"abc": task}))
    rc = main(["streams", "--tasks", str(bad), "--num-streams", "2", "--output-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert (
        err[0]
        == f"arclens: error: {bad}: task abc: train[0].output row 1: has 1 cells but row 0 has 2; grid must be rectangular"
    )
    assert not (tmp_path / "o").exists()

    rc = main(
        [
            "streams",
            "--tasks",
            "arc-agi-9/evaluation",
            "--num-streams",
            "2",
            "--output-dir",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "arc-agi-2/evaluation" in err[0]
