"""`arclens score`: the ARC Prize score of a Kaggle-format submission.

The definition is the one of ARC Prize's own scorer (arcprize/arc-agi-benchmarking,
``scoring.py``): a test output is solved when either attempt equals it exactly (same shape, same
values); a task scores the fraction of its test outputs solved; the total is the sum of the task
scores, reported over the number of tasks scored. ``[]`` and other non-grids are valid attempts
that never match.

Which tasks are scored: every task of the submission, each of which must be in the solutions
(a task the solutions do not know is a mismatch, so a UserError). Tasks of the solutions that the
submission lacks are listed as missing and scored 0 only under ``missing_as_zero`` -- a partial run
(``--max-tasks``) is scored on what it attempted, and says how much it left out.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from arclens.data.tasks import Grid, as_grid
from arclens.errors import UserError


@dataclass(frozen=True)
class TaskScore:
    task_id: str
    solved: tuple[bool, ...]  # one per test output

    @property
    def score(self) -> float:
        return sum(self.solved) / len(self.solved) if self.solved else 0.0


@dataclass(frozen=True)
class ScoreResult:
    tasks: tuple[TaskScore, ...]
    missing: tuple[str, ...] = field(default=())  # solution tasks absent from the submission

    @property
    def total(self) -> float:
        return sum(t.score for t in self.tasks)

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    @property
    def fraction(self) -> float:
        return self.total / self.n_tasks if self.tasks else 0.0

    def to_json(self) -> dict:
        return {
            "score": self.total,
            "n_tasks": self.n_tasks,
            "fraction": self.fraction,
            "missing": list(self.missing),
            "tasks": {t.task_id: {"score": t.score, "solved": list(t.solved)} for t in self.tasks},
        }


def grid_or_none(value) -> Grid | None:
    """``value`` as a Grid when it is a non-empty rectangular list of rows of ints, else None.

    Attempts are compared as grids, so a malformed attempt is simply one that matches nothing.
    bools are ints to Python but never ARC colours."""
    if not isinstance(value, list | tuple) or not value:
        return None
    width = None
    for row in value:
        if not isinstance(row, list | tuple) or not row:
            return None
        if width is None:
            width = len(row)
        if len(row) != width or not all(isinstance(v, int) and not isinstance(v, bool) for v in row):
            return None
    return as_grid(value)


def score_submission(
    submission: Mapping[str, list], solutions: Mapping[str, list[Grid]], *, missing_as_zero: bool = False
) -> ScoreResult:
    """Score parsed JSON: ``submission`` is ``{task_id: [{"attempt_1": G, "attempt_2": G}, ...]}``,
    ``solutions`` is ``{task_id: [G, ...]}`` (one grid per test input, in order)."""
    unknown = sorted(set(submission) - set(solutions))
    if unknown:
        raise UserError(
            f"submission: {len(unknown)} task(s) not in the solutions, e.g. {unknown[0]!r}; "
            "expected the solutions of the same task set"
        )
    results = []
    for task_id in sorted(submission):
        entries, truths = submission[task_id], [as_grid(g) for g in solutions[task_id]]
        if len(entries) != len(truths):
            raise UserError(
                f"submission: task {task_id!r} has {len(entries)} test prediction(s), "
                f"the solutions have {len(truths)} test output(s)"
            )
        solved = []
        for entry, truth in zip(entries, truths, strict=True):
            attempts = [grid_or_none(v) for k, v in entry.items() if k.startswith("attempt_")]
            solved.append(any(a is not None and a == truth for a in attempts))
        results.append(TaskScore(task_id, tuple(solved)))
    missing = tuple(sorted(set(solutions) - set(submission)))
    if missing_as_zero:
        results += [TaskScore(t, (False,) * len(solutions[t])) for t in missing]
        results.sort(key=lambda t: t.task_id)
    return ScoreResult(tuple(results), missing)


def _read_json(path: str, what: str):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{what} {path}: is a directory, expected a JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{what} {path}: not valid JSON ({e})") from None


def load_submission(path: str) -> dict[str, list[dict]]:
    """Read and check the shape of a Kaggle ARC Prize submission file."""
    data = _read_json(path, "--submission")
    if not isinstance(data, dict):
        raise UserError(f"--submission {path}: expected a JSON object {{task_id: [{{attempt_1, attempt_2}}, ...]}}")
    for task_id, entries in data.items():
        if not isinstance(entries, list) or not entries:
            raise UserError(f"--submission {path}: task {task_id!r}: expected a non-empty list, one dict per test input")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or not any(k.startswith("attempt_") for k in entry):
                raise UserError(
                    f"--submission {path}: task {task_id!r} test {i}: expected a dict with attempt_1/attempt_2"
                )
    return data


def _is_solutions_mapping(data) -> bool:
    """``{task_id: [grid, ...]}``: convert's test_outputs file and Kaggle's *_solutions.json."""
    return (
        isinstance(data, dict)
        and bool(data)
        and all(isinstance(v, list) and v and all(isinstance(g, list) for g in v) for v in data.values())
        and not any(isinstance(g, dict) for v in data.values() for g in v)
    )


def load_solutions(src: str) -> dict[str, list[Grid]]:
    """Solutions from a ``{task_id: [grid, ...]}`` JSON file, else from any task source that
    ``load_tasks`` reads (built-in set, folder, ARC JSON, JSONL) whose test outputs are known."""
    if os.path.isfile(src) and src.endswith(".json"):
        data = _read_json(src, "--solutions")
        if _is_solutions_mapping(data):
            out = {}
            for task_id, grids in data.items():
                parsed = [grid_or_none(g) for g in grids]
                if any(g is None for g in parsed):
                    raise UserError(f"--solutions {src}: task {task_id!r}: every solution must be a rectangular grid of ints")
                out[task_id] = parsed
            return out
    from arclens.data.loaders import load_tasks  # a task set with its outputs

    tasks = load_tasks(src)
    out = {}
    for task in tasks:
        if any(e.output is None for e in task.test):
            raise UserError(f"--solutions {src}: task {task.task_id!r} has no test output; expected a set with solutions")
        out[task.task_id] = [e.output for e in task.test]
    if not out:
        raise UserError(f"--solutions {src}: no tasks found")
    return out


def format_report(result: ScoreResult, per_task: bool) -> str:
    lines = []
    if per_task:
        for t in result.tasks:
            marks = " ".join("1" if s else "0" for s in t.solved)
            lines.append(f"{t.task_id}\t{t.score:.3f}\t[{marks}]")
    lines.append(
        f"score: {result.total:.3f} / {result.n_tasks} tasks = {100 * result.fraction:.2f}% "
        f"({sum(sum(t.solved) for t in result.tasks)} of {sum(len(t.solved) for t in result.tasks)} test outputs)"
    )
    if result.missing:
        lines.append(f"note: {len(result.missing)} task(s) of the solutions are not in the submission (not scored)")
    return "\n".join(lines)


def main(args) -> int:
    submission = load_submission(args.submission)
    solutions = load_solutions(args.solutions)
    result = score_submission(submission, solutions)
    print(format_report(result, getattr(args, "per_task", False)))
    return 0
