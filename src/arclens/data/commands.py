"""The `convert` and `streams` sub-commands (cli.py parses, these run)."""

from __future__ import annotations

import sys

from arclens.data.barc import ConvertReport, convert_barc
from arclens.data.loaders import load_tasks
from arclens.data.streams import write_streams


def convert(args) -> int:
    def progress(report: ConvertReport) -> None:  # 200k hub rows take a while; show life on stderr
        print(
            f"  ... {report.rows_read} rows read, {report.tasks_written} tasks", file=sys.stderr, flush=True
        )

    report = convert_barc(
        args.dataset,
        args.output_dir,
        split=args.split,
        max_samples=args.max_samples,
        max_train_examples=args.max_train_examples,
        fmt=args.format,
        progress=progress,
    )
    print("arclens convert: " + "\n  ".join(report.lines()))
    return 0


def streams(args) -> int:
    tasks = load_tasks(args.tasks, solutions=args.solutions, max_tasks=args.max_tasks)
    paths = write_streams(tasks, args.num_streams, args.output_dir, source=args.tasks)
    print(
        f"arclens streams: {len(tasks)} tasks from {args.tasks} -> {len(paths)} streams in {args.output_dir}"
    )
    return 0
