"""Turn parsed JSON into validated Tasks, with errors that say exactly where the data is wrong.

Every rejection is one `UserError` whose message names the file (or built-in set), the task and
the place inside it, e.g. ``tasks.json: task 007bbfb7: train[2].output row 3: value 12 is outside
0-9``. The rules are SPEC.md section 1: a grid is a non-empty rectangular list of rows of ints
0-9, each side 1..30; a task has at least one train example (with output) and one test input.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Mapping

from arclens.data.tasks import Example, Grid, Task
from arclens.errors import UserError

MAX_SIDE = 30
_INT_ONLY = {int}
_COLOURS = frozenset(range(10))
# Sample keys are "task_id/test_index/aug_index" (SPEC.md section 1) and task ids become file
# names in streams and stores, so a separator, whitespace or control character would break them.
_TASK_ID = re.compile(r"[^/\\\s\x00-\x1f]+")


class GridError(ValueError):
    """A grid that breaks a rule. ``where`` is the row/cell inside the grid (may be empty);
    ``oversized`` tells convert that the only problem is a side above 30 (a pair BARC drops)."""

    def __init__(self, where: str, message: str, oversized: bool = False):
        super().__init__(f"{where}: {message}" if where else message)
        self.where = where
        self.message = message
        self.oversized = oversized


def check_grid(value) -> Grid:
    """Validate one grid and return it as a Grid, or raise GridError saying what is wrong."""
    if not isinstance(value, (list, tuple)):
        raise GridError("", f"expected a list of rows, got {_kind(value)}")
    if not value:
        raise GridError("", "grid has no rows; each side must be 1..30")
    rows = []
    width = None
    for r, row in enumerate(value):
        if not isinstance(row, (list, tuple)):
            raise GridError(f"row {r}", f"expected a list of ints, got {_kind(row)}")
        if width is None:
            width = len(row)
            if width == 0:
                raise GridError(f"row {r}", "row is empty; each side must be 1..30")
        elif len(row) != width:
            raise GridError(
                f"row {r}", f"has {len(row)} cells but row 0 has {width}; grid must be rectangular"
            )
        # Fast path, at C speed: plain ints 0-9 (the type check keeps bools out, as True == 1).
        if set(map(type, row)) == _INT_ONLY and _COLOURS.issuperset(row):
            rows.append(tuple(row))
        else:
            rows.append(_check_cells(row, r))
    height = len(rows)
    if height > MAX_SIDE or width > MAX_SIDE:
        raise GridError("", f"grid is {height}x{width}; each side must be 1..{MAX_SIDE}", oversized=True)
    return tuple(rows)


def _check_cells(row, r: int) -> tuple[int, ...]:
    for c, v in enumerate(row):
        # bool is an int subclass; a JSON `true` in a grid is a mistake, not colour 1. Numpy
        # integers (rows read through pyarrow/datasets) are Integral and fine.
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise GridError(f"row {r} col {c}", f"expected an int 0-9, got {_kind(v)} {v!r}")
        if not 0 <= v <= 9:
            raise GridError(f"row {r} col {c}", f"value {v} is outside 0-9")
    return tuple(int(v) for v in row)


def check_task_id(task_id, source: str) -> str:
    if not isinstance(task_id, str) or not _TASK_ID.fullmatch(task_id):
        raise UserError(
            f"{source}: task id {task_id!r} is not valid; expected a non-empty string without '/', "
            "'\\', whitespace or control characters"
        )
    return task_id


def parse_task(task_id: str, data, source: str) -> Task:
    """Validate ARC-layout JSON (``{"train": [...], "test": [...]}``) into a Task.

    ``source`` names the file or built-in set for the error message. Keys other than train/test
    (some collections carry a name or a task_id) are ignored.
    """
    check_task_id(task_id, source)
    prefix = f"{source}: task {task_id}"
    if not isinstance(data, Mapping):
        raise UserError(f"{prefix}: expected an object with 'train' and 'test', got {_kind(data)}")
    train = _parse_examples(data, "train", prefix, output_required=True)
    test = _parse_examples(data, "test", prefix, output_required=False)
    return Task(task_id=task_id, train=train, test=test)


def _parse_examples(data: Mapping, part: str, prefix: str, output_required: bool) -> tuple[Example, ...]:
    if part not in data:
        raise UserError(f"{prefix}: missing '{part}' list")
    items = data[part]
    if not isinstance(items, list):
        raise UserError(f"{prefix}: '{part}' must be a list of examples, got {_kind(items)}")
    if not items:
        raise UserError(f"{prefix}: '{part}' is empty; a task needs at least one {part} example")
    examples = []
    for i, item in enumerate(items):
        where = f"{part}[{i}]"
        if not isinstance(item, Mapping):
            raise UserError(
                f"{prefix}: {where}: expected an object with 'input' and 'output', got {_kind(item)}"
            )
        if "input" not in item:
            raise UserError(f"{prefix}: {where}: missing 'input'")
        grid_in = parse_grid(item["input"], f"{prefix}: {where}.input")
        out = item.get("output")
        if out is None:
            if output_required:
                raise UserError(f"{prefix}: {where}: missing 'output'; every train example needs one")
            grid_out = None
        else:
            grid_out = parse_grid(out, f"{prefix}: {where}.output")
        examples.append(Example(grid_in, grid_out))
    return tuple(examples)


def parse_grid(value, where: str) -> Grid:
    """check_grid with the failure turned into a UserError that starts with ``where``."""
    try:
        return check_grid(value)
    except GridError as err:
        raise UserError(
            f"{where} {err.where}: {err.message}" if err.where else f"{where}: {err.message}"
        ) from None


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )
