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
    "eval-sae": "arclens.pipeline.eval_sae:main",
    "inspect": "arclens.store.commands:inspect",
    "verify": "arclens.store.commands:verify",
    "export-pickle": "arclens.store.commands:export_pickle",
    "random-model": "arclens.model.random_checkpoint:main",
    "train-sae": "arclens.pipeline.train_sae:main",
    "features": "arclens.features.commands:features",
    "toy-model": "arclens.pipeline.toy_model:main",
    "dashboard": "arclens.features.dashboard.build:main",
}


class _Parser(argparse.ArgumentParser):
    """argparse prints usage plus the error; we want the one line SPEC.md asks for."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message}")


def _add_prompt_options(p: argparse.ArgumentParser, seed_flag: str = "--seed") -> None:
    g = p.add_argument_group("prompt options (arc24's names and defaults)")
    g.add_argument("--prompt-version", default=DEFAULT_PROMPT_VERSION)
    g.add_argument("--encoder", default=DEFAULT_ENCODER, help="arc24 encoder expression (parsed, never eval'd)")
    g.add_argument("--predictions-per-task", type=int, default=8)
    g.add_argument(seed_flag, type=int, default=0, help="seed of the augmentations")
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
    g = p.add_argument_group("interventions: an SAE in the loop (docs/INTERVENTIONS.md); each flag repeatable, "
                             "one edit per hook")
    g.add_argument("--splice", action="append", default=None, metavar="SAE_DIR",
                   help="replace the SAE's hook by its reconstruction")
    g.add_argument("--ablate", action="append", default=None, metavar="SAE_DIR:L1,L2,...",
                   help="remove these latents' contributions at the SAE's hook")
    g.add_argument("--steer", action="append", default=None, metavar="SAE_DIR:LATENT:ALPHA",
                   help="add ALPHA units of the latent's decoder direction at the SAE's hook")
    g.add_argument("--keep-error", action=argparse.BooleanOptionalAction, default=None,
                   help="add the SAE's reconstruction error back (default: no for --splice, yes for --ablate)")
    g.add_argument("--edit-where", default=None, metavar="TOKENS",
                   help="tokens the edits apply to: everywhere (default), answer, prompt, cells, cells:test_input, "
                        "cells:train_input, cells:train_output, cells:N; join with '|'")
    g.add_argument("--allow-other-model", action="store_true",
                   help="use SAEs whose cfg.json names another model (same weights under another name)")
    _add_prompt_options(p)
    _add_distributed_options(p)

    p = sub.add_parser("score", help="ARC Prize score of a submission.json")
    p.add_argument("--submission", required=True)
    p.add_argument("--solutions", required=True, help="solutions file, or a built-in set with outputs")
    p.add_argument("--per-task", action="store_true", help="print a line per task")

    p = sub.add_parser("eval-sae", help="CE, KL and loss recovered with an SAE spliced in, on arc24 training prompts")
    p.add_argument("--sae", required=True, help="SAE folder (SAELens v6 layout: cfg.json + sae_weights.safetensors)")
    p.add_argument("--model", required=True)
    _add_task_options(p)
    p.add_argument("--out", required=True, help="results .json")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    p.add_argument("--tokens-per-batch", type=int, default=None, help="token budget per device batch")
    p.add_argument("--allow-other-model", action="store_true",
                   help="skip the check that the SAE's model_name names --model (same weights, another name)")
    _add_prompt_options(p)

    p = sub.add_parser("inspect", help="summary of an activation store")
    p.add_argument("dest")

    p = sub.add_parser("verify", help="check every committed shard against its checksum and index")
    p.add_argument("dest")

    p = sub.add_parser("export-pickle", help="UNSAFE legacy export: gzipped pickle shards (seed layout)")
    p.add_argument("dest")
    p.add_argument("out")

    p = sub.add_parser("features", help="per-latent statistics of an SAE by ARC grid role -> FDIR (docs/FEATURES.md)")
    p.add_argument("--sae", required=True, help="SAE folder (SAELens v6 layout); its hook must be in the source")
    p.add_argument("--store", default=None, help="activation store (local path or fsspec URL) to read")
    p.add_argument("--model", default=None, help="the model source; with --store: the model for token strings and logits")
    p.add_argument("--tasks", default=None, help="the model source's tasks; with --store: the store's tasks (default: its metadata)")
    p.add_argument("--solutions", default=None, help="Kaggle *_solutions.json for a *_challenges.json")
    p.add_argument("--max-tasks", type=int, default=None, help="only the first N tasks (model source)")
    p.add_argument("--out", required=True, help="output folder (FDIR), written whole")
    p.add_argument("--top-k", type=int, default=32, help="top activating tokens kept per latent")
    p.add_argument("--quantiles", type=int, default=10, help="equal-width activation intervals per power of two")
    p.add_argument("--quantile-examples", type=int, default=5, help="random examples per interval")
    p.add_argument("--context", type=int, default=8, help="tokens each side of an example")
    p.add_argument("--logits", type=int, default=10, help="tokens promoted and suppressed per latent (0: none)")
    p.add_argument("--batch-tokens", type=int, default=None,
                   help="tokens per device batch (default from a store: 4096 on the CPU, up to 32768 on an "
                        "accelerator as d_sae allows; from a model: the extract job's default per device)")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16",
                   help="the model source's compute dtype (as extract --dtype)")
    p.add_argument("--allow-other-model", action="store_true",
                   help="the model source: run an SAE whose cfg names another model (same weights, other name)")
    p.add_argument("--tallies", choices=["auto", "device", "host"], default="auto",
                   help="where the per-pair counts (histogram, intervals x roles) are made; every choice writes the "
                        "same files (auto: the device, unless it is the CPU or they would fill a quarter of it)")
    p.add_argument("--fold-workers", type=int, default=None, metavar="N",
                   help="processes that fold the pass's results on the host, a range of latents each; every N "
                        "writes the same files (default: 1 on the CPU backend, else the cores less 4, at least half, up to 16)")
    p.add_argument("--png", type=int, nargs="+", default=None, metavar="LATENT",
                   help="also draw these latents' top examples as ARC grids: FDIR/figures/latent-L.png")
    p.add_argument("--png-dir", default=None, help="folder for the --png figures (default FDIR/figures)")
    _add_prompt_options(p)

    p = sub.add_parser("dashboard", help="static site of a features folder (opens from disk, no server)")
    p.add_argument("fdir", help="a folder written by `arclens features`")
    p.add_argument("--out", required=True, help="site folder (SITE/index.html), written whole")

    p = sub.add_parser("train-sae", help="train SAEs or a transcoder on a store's activations, or on the fly "
                       "from a model (docs/SAE.md)")
    p.add_argument("--store", default=None, help="activation store to train on (local path or fsspec URL)")
    g = p.add_argument_group("on the fly, instead of --store (docs/SAE.md 'On the fly'): every real token of "
                             "every prompt, as extract --positions all stores them")
    g.add_argument("--model", default=None, help="model dir or hub id whose forward passes feed the SAEs")
    g.add_argument("--tasks", default=None, help="file, folder, or built-in set such as arc-agi-1/evaluation")
    g.add_argument("--solutions", default=None, help="Kaggle *_solutions.json for a *_challenges.json")
    g.add_argument("--max-tasks", type=int, default=None, help="only the first N tasks")
    g.add_argument("--model-dtype", choices=["bfloat16", "float32"], default=None,
                   help="the model's compute and capture dtype (extract's --dtype; default bfloat16)")
    g.add_argument("--tokens-per-batch", type=int, default=None, help="token budget per device forward batch")
    g.add_argument("--shuffle-window", type=int, default=None,
                   help="forward batches mixed in one device shuffle buffer (default 16)")
    _add_prompt_options(p, seed_flag="--prompt-seed")
    p.add_argument("--out", required=True, help="output folder: one SAELens-format folder per SAE, plus checkpoints/")
    p.add_argument("--hooks", nargs="+", default=None, help="an SAE per hook, e.g. blocks.12.hook_resid_post")
    p.add_argument("--hook-in", default=None, help="a transcoder's input hook (with --hook-out)")
    p.add_argument("--hook-out", default=None, help="a transcoder's output hook")
    p.add_argument("--arch", choices=["topk", "batchtopk", "jumprelu", "relu"], default="topk")
    p.add_argument("--d-sae", type=int, nargs="+", default=None, help="latents (several: a width sweep)")
    p.add_argument("--expansion", type=float, nargs="+", default=None, help="latents as a multiple of the width (default 8)")
    p.add_argument("--k", type=int, nargs="+", default=None, help="active latents, topk/batchtopk (several: a sweep; default 32)")
    p.add_argument("--l0-coef", type=float, default=None, help="jumprelu L0 penalty (default 1.0)")
    p.add_argument("--l1-coef", type=float, default=None, help="relu L1 penalty on z * ||W_dec|| (default 1.0)")
    p.add_argument("--tokens", type=int, default=None,
                   help="training tokens (default: one pass over the store, or over the tasks' prompts)")
    p.add_argument("--batch-tokens", type=int, default=4096)
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: 2.5e-3 / sqrt(d_sae / 2^14))")
    p.add_argument("--seed", type=int, default=0, help="initialisation and data order")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="activations as fed to the SAEs (parameters are always float32)")
    p.add_argument("--checkpoint-every", type=int, default=1000, help="steps between checkpoints")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep OUT/checkpoints/ after the run")
    p.add_argument("--metrics-every", type=int, default=None, help="steps between metrics.jsonl lines")
    p.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    p.add_argument("--no-shuffle", action="store_true",
                   help="train in the source's own order (stored / forward order): for comparisons only")
    g = p.add_argument_group("recipe (each default is the recipe; docs/SAE.md)")
    g.add_argument("--decoder-norm", choices=["unit", "free"], default=None,
                   help="unit-norm decoder rows after every step (default; free for relu)")
    g.add_argument("--no-tied-init", action="store_true", help="do not start the encoder as the decoder's transpose")
    g.add_argument("--b-dec-init", choices=["median", "mean", "zeros"], default="median")
    g.add_argument("--no-input-scaling", action="store_true", help="train on raw activations (no E||x||^2 = d scaling)")
    g.add_argument("--aux-k", type=int, default=None, help="AuxK latents per token (default d_in / 2)")
    g.add_argument("--aux-coef", type=float, default=None, help="AuxK coefficient (default 1/32)")
    g.add_argument("--aux-pool", type=int, default=None,
                   help="dead latents AuxK computes exactly per step, a rotating window beyond (default 4 aux-k)")
    g.add_argument("--dead-window", type=int, default=None, help="tokens without firing before a latent is dead")
    g.add_argument("--warmup-steps", type=int, default=None, help="learning-rate warmup (default 2%% of steps, <= 1000)")
    g.add_argument("--decay-fraction", type=float, default=None, help="share of steps for the lr decay to 0 (0.2)")
    g.add_argument("--sparsity-warmup-fraction", type=float, default=None, help="L0/L1 coefficient warmup (0.05)")
    g.add_argument("--bandwidth", type=float, default=None, help="jumprelu straight-through kernel width (0.05)")
    g.add_argument("--init-threshold", type=float, default=None, help="jumprelu initial threshold (0.1)")
    g.add_argument("--batchtopk-candidates", type=int, default=None, help="batchtopk per-token candidates / k (4)")
    g = p.add_argument_group("scale-out")
    g.add_argument("--mesh", default=None, help="DATA,MODEL device mesh; latents split over MODEL")
    g.add_argument("--coordinator", default=None, help="HOST:PORT of process 0 for jax.distributed")
    g.add_argument("--num-processes", type=int, default=None)
    g.add_argument("--process-id", type=int, default=None)

    p = sub.add_parser("random-model", help="write a RANDOM-weight Qwen2 checkpoint with a tokenizer")
    p.add_argument("dir")
    p.add_argument("--preset", choices=["tiny", "0.5b", "1.5b", "7b"], default="tiny")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)

    p = sub.add_parser("toy-model", help="train a TOY tiny Qwen2 on arc24 training prompts (CPU minutes)")
    p.add_argument("dir")
    _add_task_options(p)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-tokens", type=int, default=4096, help="padded tokens per step")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--warmup", type=int, default=20, help="warm-up steps of the cosine schedule")
    p.add_argument("--seed", type=int, default=0, help="initial weights, augmentations and batch order")
    p.add_argument("--max-prompt-tokens", type=int, default=1024, help="leave out longer prompts")
    p.add_argument("--prompt-version", default=DEFAULT_PROMPT_VERSION)
    p.add_argument("--encoder", default=DEFAULT_ENCODER, help="arc24 encoder expression (parsed, never eval'd)")
    p.add_argument("--predictions-per-task", type=int, default=8, help="augmentations of each task")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--eval-tasks", default="arc-agi-1/evaluation", help="held-out tasks for the loss; none: skip")
    p.add_argument("--eval-prompts", type=int, default=64, help="held-out prompts (within --max-prompt-tokens)")
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
