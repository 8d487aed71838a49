"""The `arclens features` entry: argparse namespace -> FeaturesSettings -> features.run."""

from __future__ import annotations

import sys
from pathlib import Path


def settings_from_args(args):
    from arclens.features.run import FeaturesSettings

    prompt = None
    if args.store is None:
        from arclens.prompts import PromptConfig

        prompt = PromptConfig.from_args(args)
    return FeaturesSettings(
        sae=args.sae, out=Path(args.out), store=args.store, model=args.model, tasks=args.tasks,
        solutions=args.solutions, max_tasks=args.max_tasks, prompt=prompt, top_k=args.top_k,
        quantiles=args.quantiles, quantile_examples=args.quantile_examples, context=args.context,
        logits=args.logits, batch_tokens=args.batch_tokens, dtype=args.dtype,
        allow_other_model=args.allow_other_model, tallies=args.tallies,
        fold_workers=args.fold_workers,
    )


def check_store_flags(args) -> None:
    """With ``--store`` the model source's own flags would be ignored: the store's prompts, dtype
    and tasks are what they are. Refused, naming the first, rather than silently not applied."""
    if args.store is None:
        return
    from arclens.errors import UserError
    from arclens.prompts import PromptConfig

    given = [flag for flag, on in (("--max-tasks", args.max_tasks is not None), ("--dtype", args.dtype != "bfloat16"),
                                   ("--allow-other-model", args.allow_other_model)) if on]
    given += PromptConfig.from_args(args).flags_changed()
    if given:
        raise UserError(f"arclens features: {given[0]} is for the model source (--model MODEL --tasks SRC); "
                        f"--store {args.store} already holds its activations and prompts")


def features(args) -> int:
    from arclens.errors import UserError
    from arclens.features.run import run

    if args.store is None and (args.model is None or args.tasks is None):
        raise UserError("arclens features: give --store DEST, or --model MODEL --tasks SRC (the model source)")
    check_store_flags(args)
    png = getattr(args, "png", None)
    if png and any(latent < 0 for latent in png):
        raise UserError(f"--png: latents are numbered from 0, got {min(png)}")
    if args.store is None:  # the model source compiles the capture shapes; a rerun loads them
        from arclens.pipeline.compile_cache import enable_compile_cache

        enable_compile_cache()
    summary = run(settings_from_args(args))
    print(f"arclens features: {summary['d_sae']} latents over {summary['n_tokens']:,} tokens in "
          f"{summary['seconds']:.1f} s -> {args.out}", file=sys.stderr)
    if png:  # paper figures of these latents, drawn from the FDIR just written (features/figures.py)
        from arclens.features.figures import write_figures

        for path in write_figures(args.out, png, getattr(args, "png_dir", None)):
            print(path)
    return 0
