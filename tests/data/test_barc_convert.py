"""`arclens convert` on rows with the exact BARC schema (`source`, `examples`, `seeds`), as
BARC's generate_problems.py writes them and the hub dataset
barc0/200k_HEAVY_gpt4o-description-gpt4omini-code_generated_problems serves them."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arclens.cli import main
from arclens.data import barc
from arclens.data.barc import convert_barc, convert_row
from arclens.data.loaders import load_tasks
from arclens.data.tasks import as_grid
from arclens.errors import UserError

BIG = [[3] * 31 for _ in range(31)]


def g(v, h=2, w=2):
    return [[(v + r + c) % 10 for c in range(w)] for r in range(h)]


def row(pairs, source="def main(input_grid):\n    return input_grid\n", seeds=("007bbfb7",)):
    return {"source": source, "examples": pairs, "seeds": list(seeds)}


GOOD = row([[g(1), g(2)], [g(3), g(4)], [g(5), g(6)], [g(7), g(8)]])
ROWS = [
    GOOD,  # 3 train + test
    row([[g(1), g(1, 1, 3)], [BIG, g(2)], [g(3), g(4)], [g(5), g(9)]]),  # a 31x31 pair dropped -> 2 train
    row([[g(1), BIG], [g(3), g(4)]]),  # one valid pair left: too few
    row([[g(1), g(2)]]),  # one pair: too few
    row([[[[1, 2], [3]], g(2)], [g(3), g(4)]]),  # ragged grid: malformed
    row([[g(1), [[10]]], [g(3), g(4)]]),  # value 10: malformed
    row([[g(1), g(2), g(3)], [g(3), g(4)]]),  # a "pair" of three grids: malformed
    {"source": "x", "examples": None, "seeds": []},  # no examples: malformed
    GOOD,  # the same task again: duplicate
    row([[g(i), g(i + 1)] for i in range(0, 10, 2)]),  # 5 pairs: 4 train
]
N_TASKS, N_MALFORMED, N_TOO_FEW, N_DUP, N_DROPPED = 3, 4, 2, 1, 2


def write_jsonl(path, rows, extra_lines=()):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "".join(extra_lines))
    return str(path)


def read(path):
    return json.loads(open(path).read())


def test_task_id_is_md5_of_canonical_content():
    result = convert_row(GOOD)
    canonical = (
        '{"test":[{"input":[[7,8],[8,9]],"output":[[8,9],[9,0]]}],'
        '"train":[{"input":[[1,2],[2,3]],"output":[[2,3],[3,4]]},'
        '{"input":[[3,4],[4,5]],"output":[[4,5],[5,6]]},'
        '{"input":[[5,6],[6,7]],"output":[[6,7],[7,8]]}]}'
    )
    assert result.task.task_id == hashlib.md5(canonical.encode()).hexdigest()
    assert result.test_output == as_grid(g(8)) and result.task.test[0].output is None


def test_convert_jsonl_counts_outputs_and_round_trip(tmp_path, capsys):
    src = write_jsonl(tmp_path / "barc.jsonl", ROWS, ["{this is not json\n", "[1, 2]\n"])
    out = tmp_path / "out"
    assert main(["convert", "--dataset", src, "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    for line in (
        "read 12 rows",
        f"wrote {N_TASKS} tasks",
        f"skipped {N_MALFORMED + 2} malformed rows (first: line 5: examples[0] input: row 1: has 1 cells",
        f"skipped {N_TOO_FEW} rows with fewer than 2 valid pairs",
        f"skipped {N_DUP} duplicate rows",
        f"dropped {N_DROPPED} pairs with a grid over 30x30",
    ):
        assert line in printed, (line, printed)

    tasks_json = read(out / "arc_format_train.json")
    outputs = read(out / "test_outputs_train.json")
    assert len(tasks_json) == N_TASKS and set(outputs) == set(tasks_json)
    assert all("output" not in t["test"][0] and len(t["test"]) == 1 for t in tasks_json.values())
    by_id = {convert_row(r).task.task_id: r for r in (ROWS[0], ROWS[1], ROWS[9])}
    assert set(tasks_json) == set(by_id)
    for task_id, source_row in by_id.items():
        pairs = [p for p in source_row["examples"] if BIG not in p]
        assert tasks_json[task_id]["train"] == [{"input": i, "output": o} for i, o in pairs[:-1]]
        assert tasks_json[task_id]["test"] == [{"input": pairs[-1][0]}]
        assert outputs[task_id] == [pairs[-1][1]]

    # the two files load back as full tasks
    tasks = load_tasks(str(out / "arc_format_train.json"), solutions=str(out / "test_outputs_train.json"))
    assert len(tasks) == N_TASKS and all(t.test[0].output is not None for t in tasks)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_parquet_and_dataset_folder_through_datasets_same_result_as_jsonl(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pytest.importorskip("datasets")
    (tmp_path / "repo").mkdir()  # a folder is read as a dataset repo, as from the hub
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "repo" / "barc.parquet")
    report = convert_barc(str(tmp_path / "repo"), str(tmp_path / "pq"), fmt="jsonl")
    assert (report.rows_read, report.tasks_written) == (len(ROWS), N_TASKS)
    assert (report.skipped_malformed, report.skipped_too_few_pairs) == (N_MALFORMED, N_TOO_FEW)
    assert (report.skipped_duplicate, report.pairs_dropped_oversized) == (N_DUP, N_DROPPED)
    convert_barc(write_jsonl(tmp_path / "barc.jsonl", ROWS), str(tmp_path / "js"), fmt="jsonl")
    assert (tmp_path / "pq/arc_format_train.jsonl").read_text() == (
        tmp_path / "js/arc_format_train.jsonl"
    ).read_text()
    assert read(tmp_path / "pq/test_outputs_train.json") == read(tmp_path / "js/test_outputs_train.json")
    single = convert_barc(str(tmp_path / "repo" / "barc.parquet"), str(tmp_path / "one"), fmt="jsonl")
    assert single.tasks_written == N_TASKS


def test_jsonl_output_format_loads(tmp_path):
    convert_barc(write_jsonl(tmp_path / "b.jsonl", ROWS), str(tmp_path / "o"), split="dev", fmt="jsonl")
    lines = (tmp_path / "o/arc_format_dev.jsonl").read_text().splitlines()
    assert len(lines) == N_TASKS and all("task_id" in json.loads(line) for line in lines)
    tasks = load_tasks(
        str(tmp_path / "o/arc_format_dev.jsonl"), solutions=str(tmp_path / "o/test_outputs_dev.json")
    )
    assert len(tasks) == N_TASKS


def test_json_rows_file(tmp_path):
    (tmp_path / "rows.json").write_text(json.dumps({"train": ROWS}))
    report = convert_barc(str(tmp_path / "rows.json"), str(tmp_path / "o"))
    assert report.tasks_written == N_TASKS and report.skipped_malformed == N_MALFORMED


def test_max_samples_and_max_train_examples(tmp_path):
    src = write_jsonl(tmp_path / "b.jsonl", ROWS)
    report = convert_barc(src, str(tmp_path / "a"), max_samples=3)
    assert report.rows_read == 3 and report.tasks_written == 2 and report.skipped_too_few_pairs == 1
    convert_barc(src, str(tmp_path / "b"), max_train_examples=2)
    tasks = read(tmp_path / "b/arc_format_train.json")
    assert sorted(len(t["train"]) for t in tasks.values()) == [2, 2, 2]
    for flag, kwargs in (
        ("--max-samples", {"max_samples": 0}),
        ("--max-train-examples", {"max_train_examples": 0}),
    ):
        with pytest.raises(UserError, match=f"{flag} must be at least 1"):
            convert_barc(src, str(tmp_path / "c"), **kwargs)
    with pytest.raises(UserError, match="--split '../x': expected a split name"):
        convert_barc(src, str(tmp_path / "c"), split="../x")
    assert not (tmp_path / "c").exists()


def test_no_valid_row_is_an_error_and_writes_nothing(tmp_path, capsys):
    src = write_jsonl(tmp_path / "b.jsonl", ROWS[2:8])
    out = tmp_path / "out"
    out.mkdir()
    (out / "test_outputs_train.json").write_text("previous")
    assert main(["convert", "--dataset", src, "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no row gave a task" in err[0] and "skipped 4 malformed rows" in err[0]
    assert sorted(p.name for p in out.iterdir()) == ["test_outputs_train.json"]
    assert (out / "test_outputs_train.json").read_text() == "previous"


def test_failure_midway_leaves_no_half_written_file(tmp_path, monkeypatch):
    src = write_jsonl(tmp_path / "b.jsonl", ROWS)
    out = tmp_path / "out"
    convert_barc(src, str(out))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls = []

    def failing(row, max_train_examples=None):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return convert_row(row, max_train_examples)

    monkeypatch.setattr(barc, "convert_row", failing)
    with pytest.raises(KeyboardInterrupt):
        convert_barc(src, str(out), max_train_examples=1)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_missing_local_file_and_unreachable_hub(tmp_path, capsys, monkeypatch):
    assert (
        main(["convert", "--dataset", str(tmp_path / "nope.parquet"), "--output-dir", str(tmp_path / "o")])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.parquet: no such file" in err[0]
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert (
        main(["convert", "--dataset", "barc0/no-such-dataset-here", "--output-dir", str(tmp_path / "o")]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "barc0/no-such-dataset-here: cannot open split 'train' with `datasets`" in err[0]
    assert not (tmp_path / "o").exists()


# ---- convert_row with generated rows ---------------------------------------------------------

small_grids = st.integers(1, 4).flatmap(
    lambda w: st.lists(st.lists(st.integers(0, 9), min_size=w, max_size=w), min_size=1, max_size=4)
)
pairs = st.lists(st.tuples(small_grids, small_grids).map(list), min_size=0, max_size=6)


@settings(max_examples=80, deadline=None)
@given(pairs, st.lists(st.integers(0, 6), max_size=3), st.one_of(st.none(), st.integers(1, 4)))
def test_convert_row_keeps_valid_pairs_in_order(valid, big_at, k):
    examples = list(valid)
    for pos in sorted(big_at, reverse=True):
        examples.insert(min(pos, len(examples)), [BIG, [[1]]])
    result = convert_row(row(examples), max_train_examples=k)
    assert result.dropped_pairs == len(big_at)
    if len(valid) < 2:
        assert result.skip == "too_few_pairs" and result.task is None
        return
    train = valid[:-1] if k is None else valid[:-1][:k]
    assert [(e.input, e.output) for e in result.task.train] == [(as_grid(i), as_grid(o)) for i, o in train]
    assert result.task.test[0].input == as_grid(valid[-1][0]) and result.test_output == as_grid(valid[-1][1])
    # the id depends on content only: the same pairs without the dropped ones give the same id
    assert (
        convert_row(row(valid, source="other", seeds=()), max_train_examples=k).task.task_id
        == result.task.task_id
    )
