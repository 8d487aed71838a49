"""The submission of `arclens infer`: vote each test input's predictions into two attempts.

Pure functions over prediction records (predictions.py); no model needed. ``submission.json`` is
the Kaggle ARC Prize format: ``{task_id: [{"attempt_1": G, "attempt_2": G}, ...]}``, one entry per
test input, in order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from arclens.data.tasks import Grid, Task, as_grid, grid_to_json

# A missing attempt is `[]` (issue 8: "[]-padded"). It is valid JSON for every ARC Prize scorer and
# matches no answer, so a test input the model never answered can never score by accident (a
# [[0]] pad would "solve" every 1x1 all-black output).
EMPTY_ATTEMPT: Grid = ()


def _record_grid(value) -> Grid | None:
    return None if value is None else as_grid(value)


def task_attempts(task: Task, records: Iterable[dict]) -> list[dict]:
    """One ``{"attempt_1": G, "attempt_2": G}`` per test input of ``task``, in order, voted from
    the prediction records of that task (their ``reverted_grid`` and ``logprobs``)."""
    from arclens.prompts import Prediction, vote

    by_test: dict[int, list] = {i: [] for i in range(len(task.test))}
    for r in records:
        if r["test_index"] in by_test:
            by_test[r["test_index"]].append(Prediction(grid=_record_grid(r["reverted_grid"]), logprobs=r["logprobs"]))
    out = []
    for i in range(len(task.test)):
        grids = list(vote(by_test[i], n_attempts=2))
        grids += [EMPTY_ATTEMPT] * (2 - len(grids))
        out.append({"attempt_1": grid_to_json(grids[0]), "attempt_2": grid_to_json(grids[1])})
    return out


def build_submission(tasks: Sequence[Task], records: Iterable[dict]) -> dict[str, list[dict]]:
    by_task: dict[str, list[dict]] = {}
    for r in records:
        by_task.setdefault(r["task_id"], []).append(r)
    return {t.task_id: task_attempts(t, by_task.get(t.task_id, [])) for t in tasks}
