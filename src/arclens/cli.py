"""The `arclens` command line: argument parsing only.

Each sub-command lives in the package of its stage and is imported only when it runs, so that
`arclens --help` is instant and `arclens convert` never imports JAX. A UserError becomes one line
on stderr and exit status 2 (SPEC.md section 2); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

from arclens.errors import RunFailed, StorageUnavailable, UserError

DEFAULT_ENCODER = "GridShapeEncoder(RowNumberEncoder(MinimalGridEncoder()))"
DEFAULT_PROMPT_VERSION = "output-from-examples-v1"

# command -> "module:function"; the function takes the parsed argparse.Namespace.
COMMANDS = {
    "convert": "arclens.data.commands:convert",
    "streams": "arclens.data.commands:streams",
    "prompts": "arclens.prompts.commands:prompts",
    "extract": "arclens.pipeline.extract:main",
    "infer": "arclens.pipeline.infer:main",
    "score": "arclens.pipeline.score:main",
    "inspect": "arclens.store.commands:inspect",
    "verify": "arclens.store.commands:verify",
    "export-pickle": "arclens.store.commands:export_pickle",
    "random-model": "arclens.model.random_checkpoint:main",
}


class _Parser(argparse.ArgumentParser):
    """argparse prints usage plus the error; we want the one line SPEC.md asks for."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message}")


def _add_prompt_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("prompt options (arc24's names and defaults)")
    g.add_argument("--prompt-version", default=DEFAULT_PROMPT_VERSION)
    g.add_argument("--encoder", default=DEFAULT_ENCODER, help="arc24 encoder expression (parsed, never eval'd)")
    g.add_argument("--predictions-per-task", type=int, default=8)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--no-augment", action="store_true", help="one prompt per test input, no augmentation")
    g.add_argument("--with-answer", action="store_true", help="append the known test output (training form)")


def _add_task_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", required=True, help="file, folder, or built-in set such as arc-agi-1/evaluation")
    p.add_argument("--solutions", default=None, help="Kaggle *_solutions.json for a *_challenges.json")
    p.add_argument("--max-tasks", type=int, default=None, help="only the first N tasks (for smoke tests)")


def _add_distributed_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scale-out")
    g.add_argument("--mesh", default=None, help="DATA,MODEL device mesh; default all-data")
    g.add_argument("--coordinator", default=None, help="HOST:PORT of process 0 for jax.distributed")
    g.add_argument("--num-processes", type=int, default=None)
    g.add_argument("--process-id", type=int, default=None)

def _add_worker_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("independent workers sharing the store (docs/SCALING.md)")
    g.add_argument("--num-workers", type=int, default=None, help="size of the worker fleet; turns worker mode on")
    g.add_argument("--worker-id", type=int, default=None,
                   help="where this worker starts looking for units (default: TPU_WORKER_ID, else random)")
    g.add_argument("--tasks-per-unit", type=int, default=None,
                   help="tasks per work unit (default 16, or what the store's first worker recorded)")
    g.add_argument("--claim-ttl", type=float, default=None, metavar="SECONDS",
                   help="a claim without a heartbeat for this long is taken over (default 120)")
    g.add_argument("--idle-exit", type=float, default=None, metavar="SECONDS",
                   help="exit after this long with nothing to claim (default: wait until every unit is done)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="arclens", description=__doc__.splitlines()[0])
    from arclens._version import __version__

    parser.add_argument("--version", action="version", version=f"arclens {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("convert", help="BARC-style rows -> ARC tasks + held-back test outputs")
    p.add_argument("--dataset", required=True, help="HF hub dataset id, or a local .jsonl/.parquet/.json")
    p.add_argument("--split", default="train")
    p.add_argument("--max-samples", type=int, default=None)
    p.add_argument("--max-train-examples", type=int, default=None)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--format", choices=["json", "jsonl"], default="json", help="jsonl for large sets")

    p = sub.add_parser("streams", help="split tasks into N disjoint deterministic JSONL streams")
    _add_task_options(p)
    p.add_argument("--num-streams", type=int, required=True)
    p.add_argument("--output-dir", required=True)

    p = sub.add_parser("prompts", help="write the exact prompts the model would see")
    _add_task_options(p)
    p.add_argument("--model", required=True, help="model dir or hub id (for its tokenizer)")
    p.add_argument("--out", required=True, help="output .jsonl ('-' for stdout)")
    _add_prompt_options(p)

    p = sub.add_parser("extract", help="forward passes -> activation store")
    p.add_argument("--model", required=True)
    _add_task_options(p)
    p.add_argument("--out", required=True, help="local path or fsspec URL (gs://, s3://, memory://)")
    p.add_argument("--hooks", nargs="+", default=None, help="e.g. blocks.12.hook_resid_post")
    p.add_argument("--layers", nargs="+", type=int, default=None)
    p.add_argument("--activation", nargs="+", default=None, choices=["residual", "mlp", "attn"])
    p.add_argument("--positions", choices=["all", "last"], default="all")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    p.add_argument("--shard-mb", type=float, default=1024)
    p.add_argument("--tokens-per-batch", type=int, default=None, help="token budget per device batch")
    p.add_argument("--max-shapes", type=int, default=16,
                   help="compiled batch lengths per window: fewer compiles, more padding (default 16)")
    p.add_argument("--capture-memory", choices=["device", "pinned_host"], default="device",
                   help="where captures land: device memory, then copied; or pinned host memory, written by XLA")
    p.add_argument("--render-workers", type=int, default=None,
                   help="prompt-rendering processes (0: in-process; default: by job size and cores)")
    p.add_argument("--publish-threads", type=int, default=2,
                   help="shards published at once in the background (0: inline)")
    p.add_argument("--writer", default=None, help="writer name in shard file names (default: host-pid)")
    _add_prompt_options(p)
    _add_distributed_options(p)
    _add_worker_options(p)

    p = sub.add_parser("infer", help="greedy generation -> submission.json + predictions.jsonl")
    p.add_argument("--model", required=True)
    _add_task_options(p)
    p.add_argument("--out", required=True)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None,
                   help="prompts per batch on each device (default 64 on accelerators, 8 on CPU)")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    p.add_argument("--hooks", nargs="+", default=None, help="also store these hooks at every generated token")
    p.add_argument("--devices", type=int, default=None,
                   help="use the first N local devices, one model replica and batch stream each (default: all)")
    _add_prompt_options(p)
    _add_distributed_options(p)

    p = sub.add_parser("score", help="ARC Prize score of a submission.json")
    p.add_argument("--submission", required=True)
    p.add_argument("--solutions", required=True, help="solutions file, or a built-in set with outputs")
    p.add_argument("--per-task", action="store_true", help="print a line per task")

    p = sub.add_parser("inspect", help="summary of an activation store")
    p.add_argument("dest")

    p = sub.add_parser("verify", help="check every committed shard against its checksum and index")
    p.add_argument("dest")

    p = sub.add_parser("export-pickle", help="UNSAFE legacy export: gzipped pickle shards (seed layout)")
    p.add_argument("dest")
    p.add_argument("out")

    p = sub.add_parser("random-model", help="write a RANDOM-weight Qwen2 checkpoint with a tokenizer")
    p.add_argument("dir")
    p.add_argument("--preset", choices=["tiny", "0.5b", "1.5b", "7b"], default="tiny")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    return parser


def _configure_logging() -> None:
    """arclens' warnings, and the scale-out notices an operator reads in each VM's log (a replicated
    dimension, jax.distributed, claims and takeovers), go to stderr with a timestamp. Per-shard
    INFO lines stay quiet so they do not break the progress bar; third-party loggers are untouched."""
    import logging

    logger = logging.getLogger("arclens")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s arclens: %(message)s", datefmt="%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
        logger.propagate = False
        logging.getLogger("arclens.distributed").setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    _configure_logging()
    try:
        args = build_parser().parse_args(argv)
        module_name, func_name = COMMANDS[args.command].split(":")
        func = getattr(importlib.import_module(module_name), func_name)
        rc = func(args)
        return int(rc or 0)
    except UserError as err:
        print(f"arclens: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("arclens: interrupted", file=sys.stderr)
        return 130
    except StorageUnavailable as err:
        print(f"arclens: error: {err}. Everything committed before it is kept; rerun the same command to "
              "resume once the store answers again.", file=sys.stderr)
        return 1
    except RunFailed as err:
        print(f"arclens: error: {err}. Everything committed before it is kept; the same command resumes.",
              file=sys.stderr)
        return 1
    except OSError as err:
        if err.errno not in _OUT_OF_SPACE:
            raise
        # Not a bug and not bad input: the run stopped cleanly at a shard boundary (the partial
        # shard is removed, committed ones are intact), so say so in one line; exit 1, not 2.
        where = f" writing {err.filename}" if err.filename else ""
        print(f"arclens: error: {err.strerror or 'out of space'}{where}. Everything committed before "
              "it is kept (`arclens verify` checks it); free some space and rerun the same command to "
              "resume.", file=sys.stderr)
        return 1


_OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT)


if __name__ == "__main__":
    sys.exit(main())
