"""`arclens prompts`: write the exact prompts the model would see, one JSON line each."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager

from arclens.errors import UserError
from arclens.prompts.render import PromptConfig, load_tokenizer, render_samples


@contextmanager
def _open_out(path: str):
    if path == "-":
        yield sys.stdout
        return
    try:
        with open(path, "w", encoding="utf-8") as f:
            yield f
    except OSError as err:
        raise UserError(f"--out {path}: cannot write ({err.strerror})") from None


def prompts(args) -> int:
    from arclens.data.loaders import load_tasks

    config = PromptConfig.from_args(args)
    config.validate()  # flag errors before the (slower) task and tokenizer loading
    tasks = load_tasks(args.tasks, args.solutions, args.max_tasks)
    tokenizer = load_tokenizer(args.model)
    n = 0
    with _open_out(args.out) as out:
        for sample in render_samples(tasks, tokenizer, config):
            out.write(json.dumps(sample.to_json(), ensure_ascii=False) + "\n")
            n += 1
    if args.out != "-":
        print(f"wrote {n} prompts for {len(tasks)} tasks to {args.out}", file=sys.stderr)
    return 0
