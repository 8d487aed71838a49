"""`arclens convert`: BARC-style rows -> ARC tasks plus held-back test outputs.

A BARC row (e.g. `barc0/200k_HEAVY_gpt4o-description-gpt4omini-code_generated_problems`, written
by BARC's `generate_problems.py`) is ``{"source": python code, "examples": [[input, output], ...],
"seeds": [seed task ids]}``; only `examples` is used. For each row:

- a pair with a grid over 30x30 is dropped, as BARC's own dataset tools do (counted);
- a row that is not an object, has no `examples` list, or has a pair that is not two valid grids
  is skipped as malformed (counted, with the first reason shown);
- a row left with fewer than 2 pairs (one train + one test) is skipped (counted);
- train = every pair but the last (the first `max_train_examples` of them when given), test = the
  last pair's input; its output goes to the ground-truth file;
- the task id is the MD5 of the task's canonical JSON (sorted keys, no spaces, test output
  included), so it is stable across runs; a row whose task repeats an earlier one is counted
  as a duplicate and skipped.

Outputs, written atomically: ``DIR/arc_format_<split>.json`` (ARC JSON keyed by task id, test
without output) or ``.jsonl`` (one task a line with `task_id`), and
``DIR/test_outputs_<split>.json`` (``{task_id: [output]}``). Both are streamed to disk.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from arclens.data.atomic import JsonObjectWriter, atomic_text_files, ensure_output_dir
from arclens.data.tasks import Example, Grid, Task, grid_to_json
from arclens.data.validation import GridError, check_grid
from arclens.errors import UserError

LOCAL_SUFFIXES = (".jsonl", ".parquet", ".json")
_SPLIT_NAME = re.compile(r"[A-Za-z0-9_.-]+")
MIN_PAIRS = 2  # at least one train pair and the test pair


@dataclass
class ConvertedRow:
    """What one row became: a task and its test output, or the reason it was skipped."""

    task: Task | None = None
    test_output: Grid | None = None
    dropped_pairs: int = 0  # pairs with a grid over 30x30
    skip: str | None = None  # "malformed" | "too_few_pairs"
    reason: str = ""


@dataclass
class ConvertReport:
    source: str
    split: str
    rows_read: int = 0
    tasks_written: int = 0
    skipped_malformed: int = 0
    skipped_too_few_pairs: int = 0
    skipped_duplicate: int = 0
    pairs_dropped_oversized: int = 0
    first_malformed: str = ""
    outputs: list[str] = field(default_factory=list)

    @property
    def rows_skipped(self) -> int:
        return self.skipped_malformed + self.skipped_too_few_pairs + self.skipped_duplicate

    def lines(self) -> list[str]:
        out = [
            f"read {self.rows_read} rows from {self.source} (split {self.split})",
            f"wrote {self.tasks_written} tasks",
            f"skipped {self.skipped_malformed} malformed rows"
            + (f" (first: {self.first_malformed})" if self.first_malformed else ""),
            f"skipped {self.skipped_too_few_pairs} rows with fewer than {MIN_PAIRS} valid pairs",
            f"skipped {self.skipped_duplicate} duplicate rows (same task id as an earlier row)",
            f"dropped {self.pairs_dropped_oversized} pairs with a grid over 30x30",
        ]
        return out + [f"-> {p}" for p in self.outputs]


def task_id_for(train: list[tuple[Grid, Grid]], test: tuple[Grid, Grid]) -> str:
    """MD5 of the canonical JSON of the task content, test output included."""
    content = {
        "train": [{"input": grid_to_json(i), "output": grid_to_json(o)} for i, o in train],
        "test": [{"input": grid_to_json(test[0]), "output": grid_to_json(test[1])}],
    }
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.md5(canonical.encode("utf-8")).hexdigest()


def convert_row(row, max_train_examples: int | None = None) -> ConvertedRow:
    if not isinstance(row, Mapping):
        return ConvertedRow(
            skip="malformed", reason=f"expected an object with an 'examples' column, got {type(row).__name__}"
        )
    examples = row.get("examples")
    if not isinstance(examples, (list, tuple)):
        return ConvertedRow(
            skip="malformed", reason="'examples' is missing or not a list of [input, output] pairs"
        )
    pairs: list[tuple[Grid, Grid]] = []
    dropped = 0
    for i, pair in enumerate(examples):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            return ConvertedRow(skip="malformed", reason=f"examples[{i}] is not an [input, output] pair")
        grids, oversized = [], False
        for side, value in zip(("input", "output"), pair):
            try:
                grids.append(check_grid(value))
            except GridError as err:
                if not err.oversized:
                    return ConvertedRow(skip="malformed", reason=f"examples[{i}] {side}: {err}")
                oversized = True
        if oversized:
            dropped += 1
        else:
            pairs.append((grids[0], grids[1]))
    if len(pairs) < MIN_PAIRS:
        return ConvertedRow(
            dropped_pairs=dropped, skip="too_few_pairs", reason=f"{len(pairs)} valid pairs, need {MIN_PAIRS}"
        )
    train, test = pairs[:-1], pairs[-1]
    if max_train_examples is not None:
        train = train[:max_train_examples]
    task = Task(
        task_id=task_id_for(train, test),
        train=tuple(Example(i, o) for i, o in train),
        test=(Example(test[0], None),),
    )
    return ConvertedRow(task=task, test_output=test[1], dropped_pairs=dropped)


def convert_barc(
    dataset: str,
    output_dir: str,
    split: str = "train",
    max_samples: int | None = None,
    max_train_examples: int | None = None,
    fmt: str = "json",
    progress: Callable[[ConvertReport], None] | None = None,
    progress_every: int = 10_000,
) -> ConvertReport:
    """Convert ``dataset`` (hub id or local .jsonl/.parquet/.json) into ``output_dir``.

    ``max_samples`` bounds the rows read. Raises UserError when no row gives a task (and then
    writes nothing)."""
    if max_samples is not None and max_samples < 1:
        raise UserError(f"--max-samples must be at least 1, got {max_samples}")
    if max_train_examples is not None and max_train_examples < 1:
        raise UserError(f"--max-train-examples must be at least 1, got {max_train_examples}")
    if not _SPLIT_NAME.fullmatch(split):  # it becomes part of the output file names
        raise UserError(f"--split {split!r}: expected a split name such as train (letters, digits, _ . -)")
    if fmt not in ("json", "jsonl"):
        raise UserError(f"--format must be json or jsonl, got {fmt!r}")
    rows = iter_rows(dataset, split)
    out_dir = ensure_output_dir(output_dir)
    tasks_path = out_dir / f"arc_format_{split}.{fmt}"
    outputs_path = out_dir / f"test_outputs_{split}.json"
    report = ConvertReport(source=dataset, split=split, outputs=[str(tasks_path), str(outputs_path)])
    seen: set[str] = set()
    with atomic_text_files(tasks_path, outputs_path) as (tasks_file, outputs_file):
        tasks_json = JsonObjectWriter(tasks_file) if fmt == "json" else None
        outputs_json = JsonObjectWriter(outputs_file)
        for where, row in rows:
            report.rows_read += 1
            if isinstance(row, BadLine):
                result = ConvertedRow(skip="malformed", reason=row.reason)
            else:
                result = convert_row(row, max_train_examples)
            report.pairs_dropped_oversized += result.dropped_pairs
            if result.skip == "malformed":
                report.skipped_malformed += 1
                report.first_malformed = report.first_malformed or f"{where}: {result.reason}"
            elif result.skip == "too_few_pairs":
                report.skipped_too_few_pairs += 1
            elif result.task.task_id in seen:
                report.skipped_duplicate += 1
            else:
                task = result.task
                seen.add(task.task_id)
                if tasks_json is not None:
                    tasks_json.add(task.task_id, task.to_json())
                else:
                    line = {"task_id": task.task_id, **task.to_json()}
                    tasks_file.write(json.dumps(line, separators=(",", ":")) + "\n")
                outputs_json.add(task.task_id, [grid_to_json(result.test_output)])
                report.tasks_written += 1
            if progress is not None and report.rows_read % progress_every == 0:
                progress(report)
            if max_samples is not None and report.rows_read >= max_samples:
                break  # before asking the stream for one more row
        if tasks_json is not None:
            tasks_json.close()
        outputs_json.close()
        if report.tasks_written == 0:
            summary = "; ".join(report.lines()[2:6])
            raise UserError(f"--dataset {dataset}: no row gave a task, nothing written ({summary})")
    return report


@dataclass(frozen=True)
class BadLine:
    """A line of a local JSONL file that is not JSON: a malformed row, not a fatal error."""

    reason: str


def iter_rows(dataset: str, split: str) -> Iterator[tuple[str, object]]:
    """Yield ``(where, row)`` for each row of a local file, a local dataset folder or a hub
    dataset, lazily. For a local file ``split`` only names the outputs. Hub datasets are read with
    ``datasets.load_dataset(..., streaming=True)``, so 200k rows never sit in memory.
    """
    path = Path(dataset)
    if path.suffix.lower() in LOCAL_SUFFIXES:
        if not path.is_file():
            raise UserError(f"--dataset {dataset}: no such file")
        kind = path.suffix.lower()
        if kind == ".jsonl":
            return _jsonl_rows(path)
        if kind == ".json":
            return _json_rows(path, split)
        return stream_with_datasets("parquet", split="train", label=dataset, data_files=str(path))
    if path.is_dir():  # a local copy of a hub dataset repo (git clone of hf.co/datasets/...)
        return stream_with_datasets(str(path), split=split, label=dataset)
    if path.exists():
        raise UserError(
            f"--dataset {dataset}: expected a .jsonl, .parquet or .json file, or a hub dataset id"
        )
    return stream_with_datasets(dataset, split=split, label=dataset)


def _jsonl_rows(path: Path) -> Iterator[tuple[str, object]]:
    with path.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                yield f"line {n}", json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                yield f"line {n}", BadLine(f"not valid JSON ({getattr(e, 'msg', e)})")


def _json_rows(path: Path, split: str) -> Iterator[tuple[str, object]]:
    from arclens.data.loaders import read_json

    data = read_json(path)
    if isinstance(data, Mapping) and isinstance(data.get(split), list):
        data = data[split]  # {"train": [rows...]} as some exports write it
    if not isinstance(data, list):
        raise UserError(f"--dataset {path}: expected a JSON list of rows (or {{{split!r}: [rows]}})")
    for n, row in enumerate(data):
        yield f"row {n}", row


def stream_with_datasets(path: str, split: str, label: str, **kwargs) -> Iterator[tuple[str, object]]:
    """Rows through `datasets.load_dataset(path, split=split, streaming=True, **kwargs)`; the same
    path serves hub ids and the local parquet builder. Failures of the library (no network,
    unknown dataset or split) become one UserError line."""
    try:
        import datasets
    except ImportError:
        raise UserError(
            f"--dataset {label}: reading it needs the `datasets` package (pip install 'arclens[hub]')"
        ) from None
    try:
        stream = iter(datasets.load_dataset(path, split=split, streaming=True, **kwargs))
    except Exception as e:  # noqa: BLE001 - any failure of the library to open the source is the user's to fix
        raise UserError(
            f"--dataset {label}: cannot open split {split!r} with `datasets` ({_first_line(e)})"
        ) from None
    return _guarded(stream, label)


def _guarded(stream: Iterator, label: str) -> Iterator[tuple[str, object]]:
    n = 0
    while True:
        try:
            row = next(stream)
        except StopIteration:
            return
        except Exception as e:  # noqa: BLE001 - a network or decoding failure mid-stream
            raise UserError(f"--dataset {label}: reading row {n} failed ({_first_line(e)})") from None
        yield f"row {n}", row
        n += 1


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
