"""`arclens streams`: split a task set into N disjoint, deterministic JSONL streams.

Assignment: tasks are ordered by the SHA-256 of their task id (ties, impossible in practice,
broken by the id) and dealt round-robin, so stream ``k`` holds the tasks at positions
``k, k+N, k+2N, ...`` of that order. This depends only on the set of task ids and N (never on
the order of the source file, the machine or the Python hash seed); streams differ in size by at
most one task, and the hash order mixes easy and hard tasks (ids carry no meaning) so each worker
gets a similar share of work. Within a stream, lines follow the same hash order.

Each line is a task in ARC layout plus its `task_id` (test outputs kept when known), so
`load_tasks("DIR/stream_003.jsonl")` reads a stream back. `DIR/streams.json` records the
source, N, the rule and each stream's count.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from arclens.data.atomic import atomic_text_files, ensure_output_dir
from arclens.data.tasks import Task
from arclens.errors import UserError

ASSIGNMENT_RULE = "sha256(task_id) order, dealt round-robin: stream k gets positions k, k+N, k+2N, ..."
_STREAM_FILE = re.compile(r"stream_(\d+)\.jsonl")


def stream_file_name(index: int) -> str:
    return f"stream_{index:03d}.jsonl"


def assign_streams(task_ids: Iterable[str], num_streams: int) -> list[list[str]]:
    """The task ids of each stream, by the rule in the module docstring."""
    if num_streams < 1:
        raise UserError(f"--num-streams must be at least 1, got {num_streams}")
    order = sorted(set(task_ids), key=lambda t: (hashlib.sha256(t.encode("utf-8")).hexdigest(), t))
    return [order[k::num_streams] for k in range(num_streams)]


def write_streams(tasks: Sequence[Task], num_streams: int, output_dir: str, source: str = "") -> list[Path]:
    """Write ``DIR/stream_000.jsonl`` ... and ``DIR/streams.json``; returns the stream paths.

    Every stream must get at least one task, and stream files left in DIR by an earlier run with
    a larger N are refused (they would silently overlap with the new streams)."""
    streams = assign_streams((t.task_id for t in tasks), num_streams)
    if len(tasks) < num_streams:
        raise UserError(
            f"--num-streams {num_streams} is more than the {len(tasks)} tasks; every stream needs a task"
        )
    out = ensure_output_dir(output_dir)
    stale = sorted(
        p.name for p in out.iterdir() if (m := _STREAM_FILE.fullmatch(p.name)) and int(m[1]) >= num_streams
    )
    if stale:
        raise UserError(
            f"--output-dir {out}: holds {stale[0]} from an earlier run with more streams; "
            "use an empty folder or remove the old stream files"
        )
    by_id = {t.task_id: t for t in tasks}
    paths = [out / stream_file_name(k) for k in range(num_streams)]
    manifest = {
        "source": source,
        "num_streams": num_streams,
        "num_tasks": len(by_id),
        "assignment": ASSIGNMENT_RULE,
        "counts": [len(s) for s in streams],
    }
    with atomic_text_files(*paths, out / "streams.json") as files:
        for f, ids in zip(files, streams):
            for task_id in ids:
                f.write(
                    json.dumps({"task_id": task_id, **by_id[task_id].to_json()}, separators=(",", ":")) + "\n"
                )
        files[-1].write(json.dumps(manifest, indent=2) + "\n")
    return paths
