"""`arclens train-sae`: SAEs and transcoders from a store (or straight from the model), SPEC.md 5.

This module is the command's entry: flags -> typed settings (``sae.recipe.TrainSettings``),
checked before anything is written, then ``sae.trainer.train``. It lives in ``pipeline/``
because the on-the-fly source drives the extract job; everything about training is in ``sae/``.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass

from arclens.errors import UserError
from arclens.sae import recipe as R

DEFAULT_EXPANSION = 8
DEFAULT_K = 32


@dataclass(frozen=True)
class Sweep:
    """The dictionaries asked for on the command line, before widths are known."""

    pairs: tuple[tuple[str, str | None], ...]  # (hook_in, hook_out or None)
    arch: str
    widths: tuple[int, ...] | None  # --d-sae
    expansions: tuple[float, ...] | None  # --expansion
    ks: tuple[int, ...]
    sparsity_coef: float | None


def sweep_from_args(args) -> Sweep:
    if args.hooks and (args.hook_in or args.hook_out):
        raise UserError("train-sae: give either --hooks (an SAE per hook) or --hook-in/--hook-out (a transcoder)")
    if bool(args.hook_in) != bool(args.hook_out):
        raise UserError("train-sae: a transcoder needs both --hook-in and --hook-out")
    if args.hooks:
        if len(set(args.hooks)) != len(args.hooks):
            raise UserError(f"--hooks: a hook is named twice: {' '.join(args.hooks)}")
        pairs = tuple((h, None) for h in args.hooks)
    elif args.hook_in:
        if args.hook_in == args.hook_out:
            raise UserError("--hook-in and --hook-out name the same hook; for an SAE use --hooks")
        pairs = ((args.hook_in, args.hook_out),)
    else:
        raise UserError("train-sae: name what to train with --hooks H ... or --hook-in H_IN --hook-out H_OUT")
    from arclens.model.hooks import parse_hook

    for h_in, h_out in pairs:
        parse_hook(h_in)
        if h_out:
            parse_hook(h_out)
    if args.d_sae and args.expansion:
        raise UserError("train-sae: give --d-sae or --expansion, not both")
    for w in args.d_sae or ():
        if w < 1:
            raise UserError(f"--d-sae {w}: a dictionary needs at least 1 latent")
    for e in args.expansion or ():
        if not e > 0:
            raise UserError(f"--expansion {e}: expected a positive number")
    arch = args.arch
    ks = tuple(args.k) if args.k else ((DEFAULT_K,) if arch in ("topk", "batchtopk") else ())
    if args.k and arch not in ("topk", "batchtopk"):
        raise UserError(f"--k is for topk and batchtopk; --arch {arch} takes --l0-coef or --l1-coef")
    for k in ks:
        if k < 1:
            raise UserError(f"--k {k}: expected at least 1 active latent")
    if args.l0_coef is not None and arch != "jumprelu":
        raise UserError(f"--l0-coef is for --arch jumprelu (got --arch {arch})")
    if args.l1_coef is not None and arch != "relu":
        raise UserError(f"--l1-coef is for --arch relu (got --arch {arch})")
    coef = None
    if arch == "jumprelu":
        coef = args.l0_coef if args.l0_coef is not None else R.DEFAULT_L0_COEF
    elif arch == "relu":
        coef = args.l1_coef if args.l1_coef is not None else R.DEFAULT_L1_COEF
    if coef is not None and coef < 0:
        raise UserError(f"--l0-coef/--l1-coef {coef}: expected a coefficient >= 0")
    return Sweep(pairs, arch, tuple(args.d_sae) if args.d_sae else None,
                 tuple(args.expansion) if args.expansion else None, ks, coef)


def sae_specs(sweep: Sweep, width_of) -> tuple[R.SAESpec, ...]:
    """Every (hook pair x width x k) dictionary; ``width_of(hook)`` is the hook's width."""
    specs = []
    for h_in, h_out in sweep.pairs:
        d_in = width_of(h_in)
        d_out = width_of(h_out) if h_out else d_in
        if h_out and sweep.arch in ("topk", "batchtopk") and d_in != d_out:
            raise UserError(f"--hook-in {h_in} ({d_in} wide) and --hook-out {h_out} ({d_out} wide): a {sweep.arch} "
                            "transcoder needs equal widths (its SAELens export is a topk SAE)")
        widths = sweep.widths or tuple(max(0, round(e * d_in)) for e in (sweep.expansions or (DEFAULT_EXPANSION,)))
        for w in widths:
            if w < 1:
                raise UserError(f"--expansion: {w} latents for a {d_in}-wide hook; a dictionary needs at least 1")
            for k in sweep.ks or (None,):
                if k is not None and k >= w:
                    raise UserError(f"--k {k}: must be smaller than the dictionary's {w} latents (--d-sae/--expansion)")
                name = f"{h_in}--{h_out}" if h_out else h_in
                if len(widths) > 1:
                    name += f"-d{w}"
                if len(sweep.ks) > 1:
                    name += f"-k{k}"
                specs.append(R.SAESpec(name=name, hook_in=h_in, hook_out=h_out, arch=sweep.arch, d_in=d_in,
                                       d_out=d_out, d_sae=w, k=k, sparsity_coef=sweep.sparsity_coef))
    if len({s.name for s in specs}) != len(specs):
        raise UserError("train-sae: two dictionaries of the sweep would share a folder name (repeat a width or k?)")
    return tuple(specs)


def recipe_from_args(args) -> R.Recipe:
    checks = [("--aux-k", args.aux_k, 1), ("--aux-pool", args.aux_pool, 1), ("--dead-window", args.dead_window, 1), ("--warmup-steps", args.warmup_steps, 0),
              ("--batchtopk-candidates", args.batchtopk_candidates, 1)]
    for flag, value, low in checks:
        if value is not None and value < low:
            raise UserError(f"{flag} {value}: expected at least {low}")
    for flag, value in (("--bandwidth", args.bandwidth), ("--aux-coef", args.aux_coef)):
        if value is not None and not value > 0:
            raise UserError(f"{flag} {value}: expected a positive number")
    for flag, value in (("--decay-fraction", args.decay_fraction), ("--sparsity-warmup-fraction", args.sparsity_warmup_fraction)):
        if value is not None and not 0 <= value <= 1:
            raise UserError(f"{flag} {value}: expected a fraction in [0, 1]")
    kw = {"decoder_norm": args.decoder_norm, "tied_init": not args.no_tied_init, "b_dec_init": args.b_dec_init,
          "scale_inputs": not args.no_input_scaling, "aux_k": args.aux_k, "aux_pool": args.aux_pool,
          "dead_window": args.dead_window,
          "warmup_steps": args.warmup_steps}
    for name in ("aux_coef", "decay_fraction", "sparsity_warmup_fraction", "bandwidth", "init_threshold",
                 "batchtopk_candidates"):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    return R.Recipe(**kw)


def check_out(out: str, storage_options=None) -> None:
    """``--out`` must be a writable folder: probed with a small file, removed at once."""
    from arclens.store import fs as fsx

    fs, root = fsx.get_fs(out, storage_options)
    probe = fsx.join(root, f".arclens-write-probe-{uuid.uuid4().hex}")
    if fsx.is_local(fs):
        if os.path.exists(root) and not os.path.isdir(root):
            raise UserError(f"--out {out}: exists and is not a folder")
        parent = root
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
            raise UserError(f"--out {out}: {parent} is not a writable folder")
        created = not os.path.exists(root)
        try:
            os.makedirs(root, exist_ok=True)
            with open(probe, "xb"):
                pass
            os.unlink(probe)
        except OSError as err:
            raise UserError(f"--out {out}: cannot write there ({err.strerror or err})") from None
        finally:
            if created and os.path.isdir(root) and not os.listdir(root):
                os.rmdir(root)  # a bad run leaves nothing behind
        return
    try:
        fsx.write_whole(fs, probe, b"probe")
        fs.rm_file(probe)
    except (OSError, ValueError) as err:
        raise UserError(f"--out {out}: cannot write there ({type(err).__name__}: {err})") from None


def settings_from_args(args, source_tokens: int, width_of, fingerprint: dict) -> R.TrainSettings:
    sweep = sweep_from_args(args)
    specs = sae_specs(sweep, width_of)
    if args.batch_tokens < 1:
        raise UserError(f"--batch-tokens {args.batch_tokens}: expected at least 1")
    tokens = args.tokens if args.tokens is not None else source_tokens
    if tokens < args.batch_tokens:
        raise UserError(f"--tokens {tokens}: less than one batch of --batch-tokens {args.batch_tokens}"
                        + ("" if args.tokens is not None else " (the source's size)"))
    if args.lr is not None and not args.lr > 0:
        raise UserError(f"--lr {args.lr}: expected a positive learning rate")
    if args.checkpoint_every < 1:
        raise UserError(f"--checkpoint-every {args.checkpoint_every}: expected at least 1 step")
    tokens = (tokens // args.batch_tokens) * args.batch_tokens
    return R.TrainSettings(saes=specs, tokens=tokens, batch_tokens=args.batch_tokens, lr=args.lr, seed=args.seed,
                           dtype=args.dtype, shuffle=not args.no_shuffle, recipe=recipe_from_args(args),
                           source=fingerprint)


def main(args) -> int:
    # Everything is checked before anything is written: the flags, the source (the store and its
    # hooks, or the model, its hooks, the prompts and the tasks), the widths, then --out (probed);
    # only then does training (and the first write) start.
    from arclens.pipeline.train_sae_fly import check_fly_flags

    sweep_from_args(args)
    recipe_from_args(args)
    check_fly_flags(args)
    from arclens.distributed.runtime import ProcessSettings, initialize

    if args.store is None:  # on the fly: the runtime first, the extract job computes on it
        from arclens.pipeline.train_sae_fly import open_source

        runtime = initialize(ProcessSettings.from_flags(args.coordinator, args.num_processes, args.process_id))
        settings, source = open_source(args, runtime, lambda n, width_of, fp: settings_from_args(args, n, width_of, fp))
        try:
            return _train(args, settings, source, runtime, model_name=args.model)
        finally:
            source.close()
            source.job.close()
    import arclens

    store = arclens.open_store(args.store)
    d_model = int(store.d_model)

    def width_of(hook: str) -> int:
        if hook not in store.hooks:
            raise UserError(f"--store {args.store}: no hook {hook}; it has {', '.join(store.hooks)}")
        return d_model

    from arclens.sae.store_source import StoreSource, store_fingerprint

    settings = settings_from_args(args, int(store.n_tokens), width_of, store_fingerprint(store))
    runtime = initialize(ProcessSettings.from_flags(args.coordinator, args.num_processes, args.process_id))
    source = StoreSource(store, settings.hooks, batch_tokens=settings.batch_tokens, seed=settings.seed,
                         dtype=settings.dtype, shuffle=settings.shuffle)
    return _train(args, settings, source, runtime, model_name=(store.metadata.get("model") or {}).get("name"))


def _train(args, settings: R.TrainSettings, source, runtime, *, model_name: str | None) -> int:
    from arclens.distributed.mesh import make_mesh

    mesh = make_mesh(args.mesh)
    if settings.batch_tokens % mesh.shape["data"]:
        raise UserError(f"--batch-tokens {settings.batch_tokens}: must divide evenly over the mesh's "
                        f"{mesh.shape['data']} data shards (--mesh)")
    if runtime.is_leader:
        check_out(args.out)
    from arclens.pipeline.compile_cache import enable_compile_cache

    enable_compile_cache()  # a resumed run loads its compiled step instead of compiling it again
    from arclens.pipeline.stopping import StopRequest
    from arclens.sae.trainer import RunOptions, train

    options = RunOptions(out=args.out, checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints,
                         metrics_every=args.metrics_every, progress=not args.quiet, model_name=model_name)
    stop = StopRequest()
    with stop.installed():
        result = train(settings, source, options, mesh=mesh, runtime=runtime, stop=stop)
    if runtime.is_leader:
        print_summary(result, settings)
    return 0


def print_summary(result, settings: R.TrainSettings) -> None:
    if result.status == "stopped":
        print(f"stopped by {result.stopped_by} after step {result.step}/{settings.n_steps}: checkpoint committed; "
              "rerun the same command to resume")
        return
    if result.status == "already-complete":
        print("already trained with these settings; nothing to do")
    for s in result.saes:
        f = s["final"]
        print(f"{s['name']}: FVU {f.get('fvu', float('nan')):.4f}  L0 {f.get('l0', float('nan')):.1f}  "
              f"dead {f.get('dead', float('nan')):.1%}  dense {f.get('dense', float('nan')):.1%}  -> {s['folder']}")
    if result.status == "complete":
        rate = f", {result.tokens_per_s:,.0f} tokens/s" if result.tokens_per_s else ""
        print(f"{settings.tokens:,} tokens in {settings.n_steps:,} steps, {result.wall_s:.1f}s{rate}")


def describe(settings: R.TrainSettings) -> str:
    return json.dumps(settings.to_json(), indent=1)
