"""`arclens score`: ARC Prize scoring on hand-made submissions."""

from __future__ import annotations

import json

import pytest

from arclens.cli import main as cli_main
from arclens.errors import UserError
from arclens.pipeline.score import grid_or_none, load_solutions, load_submission, score_submission

A = [[1, 2], [3, 4]]
B = [[5]]
C = [[0, 0, 0]]

SOLUTIONS = {
    "t1": [A],  # one test input
    "t2": [A, B],  # two test inputs
    "t3": [C, A, B],  # three
}


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return str(path)


def test_either_attempt_counts_and_tasks_are_fractions():
    sub = {
        "t1": [{"attempt_1": B, "attempt_2": A}],  # second attempt right -> 1
        "t2": [{"attempt_1": A, "attempt_2": A}, {"attempt_1": [[6]], "attempt_2": [[0]]}],  # 1 of 2 -> 0.5
        "t3": [
            {"attempt_1": C, "attempt_2": []},  # right, with an empty second attempt
            {"attempt_1": [], "attempt_2": []},
            {"attempt_1": [[5, 5]], "attempt_2": B},
        ],  # 2 of 3
    }
    r = score_submission(sub, SOLUTIONS)
    scores = {t.task_id: t.score for t in r.tasks}
    assert scores == {"t1": 1.0, "t2": 0.5, "t3": pytest.approx(2 / 3)}
    assert r.total == pytest.approx(1 + 0.5 + 2 / 3)
    assert r.fraction == pytest.approx((1 + 0.5 + 2 / 3) / 3)
    assert r.missing == ()


def test_exact_match_only_shape_and_values():
    sol = {"t": [A]}
    near = [
        [[1, 2], [3, 5]],  # one cell off
        [[1, 2, 0], [3, 4, 0]],  # padded
        [[1, 2]],  # cropped
        [[1, 2], [3, 4], [0, 0]],
        A[0] + A[1],  # flattened
        [[True, 2], [3, 4]],  # bool is not a colour
        [[1.0, 2], [3, 4]],  # float is not a colour
        "[[1, 2], [3, 4]]",  # text
        None,
        [[1, 2], [3]],  # ragged
        [],
    ]
    for wrong in near:
        r = score_submission({"t": [{"attempt_1": wrong, "attempt_2": wrong}]}, sol)
        assert r.total == 0, wrong
    r = score_submission({"t": [{"attempt_1": [list(A[0]), list(A[1])]}]}, sol)
    assert r.total == 1


def test_grid_or_none():
    assert grid_or_none(A) == ((1, 2), (3, 4))
    assert grid_or_none([[]]) is None and grid_or_none([]) is None and grid_or_none([[1], [2, 3]]) is None


def test_unknown_task_and_wrong_test_count_are_user_errors():
    with pytest.raises(UserError, match="not in the solutions"):
        score_submission({"zz": [{"attempt_1": A, "attempt_2": A}]}, SOLUTIONS)
    with pytest.raises(UserError, match="t2.*1 test prediction.*2 test output"):
        score_submission({"t2": [{"attempt_1": A, "attempt_2": A}]}, SOLUTIONS)


def test_missing_tasks_reported_and_optionally_zero():
    sub = {"t1": [{"attempt_1": A, "attempt_2": B}]}
    r = score_submission(sub, SOLUTIONS)
    assert r.n_tasks == 1 and r.total == 1 and r.missing == ("t2", "t3")
    r = score_submission(sub, SOLUTIONS, missing_as_zero=True)
    assert r.n_tasks == 3 and r.total == 1 and r.fraction == pytest.approx(1 / 3)


def test_load_submission_rejects_bad_files(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_submission(str(tmp_path / "nope.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_submission(str(tmp_path / "bad.json"))
    with pytest.raises(UserError, match="expected a JSON object"):
        load_submission(_write(tmp_path / "list.json", [1, 2]))
    with pytest.raises(UserError, match="non-empty list"):
        load_submission(_write(tmp_path / "e.json", {"t1": []}))
    with pytest.raises(UserError, match="attempt_1/attempt_2"):
        load_submission(_write(tmp_path / "g.json", {"t1": [A]}))  # grids without the attempt dicts


def test_load_solutions_mapping_file(tmp_path):
    sol = load_solutions(_write(tmp_path / "test_outputs_train.json", SOLUTIONS))
    assert sol["t3"][0] == ((0, 0, 0),)
    with pytest.raises(UserError, match="rectangular grid"):
        load_solutions(_write(tmp_path / "s.json", {"t": [[[1, 2], [3]]]}))


def test_cli_score_end_to_end(tmp_path, capsys):
    sub = {
        "t1": [{"attempt_1": A, "attempt_2": B}],
        "t2": [{"attempt_1": A, "attempt_2": B}, {"attempt_1": [], "attempt_2": [[0]]}],
        "t3": [{"attempt_1": C, "attempt_2": C}, {"attempt_1": A, "attempt_2": A}, {"attempt_1": B, "attempt_2": B}],
    }
    sub_path = _write(tmp_path / "submission.json", sub)
    sol_path = _write(tmp_path / "solutions.json", SOLUTIONS)
    assert cli_main(["score", "--submission", sub_path, "--solutions", sol_path, "--per-task"]) == 0
    out = capsys.readouterr().out
    assert "t2\t0.500\t[1 0]" in out
    assert "score: 2.500 / 3 tasks = 83.33%" in out
    assert cli_main(["score", "--submission", str(tmp_path / "missing.json"), "--solutions", sol_path]) == 2
    assert "missing.json" in capsys.readouterr().err
