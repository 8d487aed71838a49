#!/usr/bin/env python3
"""What does `arclens features` cost beside a plain read of the same store? One run, same store.

    PYTHONPATH=src python3 benchmarks/features_throughput.py [--dest DIR] [--tasks 40] [--d-model 256]
        [--d-sae 2048] [--arch topk --k 32] [--batch-tokens 4096] [--tallies auto|device|host]
        [--fold-workers N] [--host-only] [--repeats 2]

The store holds real arc24 prompts (the first --tasks tasks of arc-agi-1/training, 8 augmentations
each, answers shown, a random tiny model's byte-level tokenizer) with random bf16 activations of
width --d-model, written once under --dest and reused by later runs of the same shape. The SAE
is random (its statistics do not change the cost, its width and L0 do). Each row is one pass over
every token:

- ``Store.batches (plain read)``: the baseline, arclens's reader in stored order delivering the
  arrays features reads (the hook and the position, token_id, grid, row and col columns): what any
  consumer of the store must at least pay. Always in batches of 4096 tokens (`READ_BATCH`).
- ``Store.samples``: the same arrays sample by sample, as features iterates them.
- ``features source``: the same tokens as features reads them, whole samples per batch, with every
  token's roles looked up (colours, original cells) on the host.
- ``plain read + SAE codes``: the plain read plus the SAE's codes on the device (the TopK
  selection, or the dense encode), nothing brought back: the floor for any command that encodes
  every token on this device.
- ``+ device step``: the features source plus the device's whole part of each batch: the SAE
  encode, the per-latent reductions, with ``--tallies device`` the per-pair counts and the pairs
  grouped by the fold's latent ranges (features/device.py, features/pairs.py), and the firing
  pairs brought back to the host, with nothing folded in.
- ``host folding alone``: the host's part of the pass (the firing pairs brought into host arrays:
  cut by numpy, or only sliced where the device grouped them; then `Accumulator.fold`) over
  device results made beforehand, and with ``--fold-workers N`` its workers' folds brought back
  at the end: with ``--tallies device`` it is what bounds the pass where the device's own part is
  nearly free (an accelerator).
- ``of which the parent's CPU`` (with fold workers): the CPU time the parent process spent in
  those folds, bringing each batch's pairs to the host and writing them into the workers' shared
  memory; with enough cores for the workers this is what bounds the host's share.
- ``features pass (no files)``: `features.run` up to the end of its streaming pass (checks, the
  source, the device step, the host accumulating); grows with the number of tokens.
- ``arclens features``: the whole command as `features.run` runs it (the pass, then writing the
  FDIR; no model, so no logits). The write grows with d_sae x examples, not with tokens.

The rows are measured round after round (``--repeats`` rounds), each reported at its best and
its median. ``--host-only`` measures the first three rows alone: the host's work that an
accelerator does not speed up, the bound of the pass there.

The page cache is warm (the store was just written or read). The goal (issue 15) is that the last
row costs at most 1.5x the first. On a CPU the SAE encode alone is hundreds of times a read for
any real width (``plain read + SAE codes`` shows it); docs/BENCHMARKS.md says what bounds the rest.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
import time
from pathlib import Path

HOOK = "blocks.12.hook_resid_post"
# The plain read's batches: the reader's default, and about its fastest whatever --batch-tokens
# (at d_model 896 on 2 cores: ~285 ns a token at 2-4k, ~700 at 32k, where each batch is a fresh
# array too large for the caches), so the baseline is never a slow read.
READ_BATCH = 4096


def build_store(dest: Path, n_tasks: int, d_model: int) -> None:
    import ml_dtypes
    import numpy as np

    from arclens.data.loaders import load_tasks
    from arclens.features.sources import tasks_fingerprint
    from arclens.model.random_checkpoint import write_random_model
    from arclens.prompts import PromptConfig, load_tokenizer, render_samples
    from arclens.store.writer import StoreWriter, open_or_create_store

    model = write_random_model(dest / "tiny-model", preset="tiny", seed=0)
    tasks = load_tasks("arc-agi-1/training", max_tasks=n_tasks)
    config = PromptConfig(predictions_per_task=8, with_answer=True)
    tokenizer = load_tokenizer(str(model))
    rng = np.random.default_rng(0)
    block = rng.standard_normal((1 << 16, d_model), dtype=np.float32).astype(ml_dtypes.bfloat16)
    meta = {"model": {"name": "synthetic-activations"}, "hooks": [HOOK], "dtype": "bfloat16", "d_model": d_model,
            "positions": "all", "prompt": config.to_json(),
            "tasks": {"source": "arc-agi-1/training", "count": len(tasks),
                      "fingerprint": tasks_fingerprint(tasks, config.with_answer)}}
    store = str(dest / "store")
    open_or_create_store(store, meta)
    with StoreWriter(store, "bench", shard_bytes=64 << 20) as w:
        for i, s in enumerate(render_samples(tasks, tokenizer, config)):
            n = len(s.token_ids)
            start = (i * 7919) % (len(block) - n)
            w.add({"key": s.key, "task_id": s.task_id, "test_index": s.test_index,
                   "augmentation": s.augmentation.to_json(), "prompt_tokens": n},
                  {HOOK: block[start:start + n], "position": np.arange(n, dtype=np.int32),
                   "token_id": s.token_ids.astype(np.int32), "grid": s.grid, "row": s.row, "col": s.col})


def random_sae(path: Path, d_model: int, d_sae: int, arch: str, k: int) -> None:
    import numpy as np

    from arclens.sae import SAEConfig, new_sae, save

    rng = np.random.default_rng(1)
    w = rng.standard_normal((d_model, d_sae)).astype(np.float32) / np.sqrt(d_model)
    cfg = SAEConfig(arch, d_model, d_sae, d_model, k=k if arch == "topk" else None, hook_name=HOOK)
    b_enc = np.zeros(d_sae, np.float32) if arch == "topk" else np.full(d_sae, -2.0, np.float32)
    save(new_sae(cfg, w, b_enc, w.T.copy(), np.zeros(d_model, np.float32)), str(path))


READ_COLUMNS = ("position", "token_id", "grid", "row", "col")  # what features reads beside the hook


def plain_read(store, batch_tokens: int) -> int:
    n = 0
    for b in store.batches([HOOK, *READ_COLUMNS], batch_size=batch_tokens, shuffle=False):
        n += b["position"].shape[0]
    return n


def samples_read(store) -> int:
    import numpy as np

    n = 0
    for _, arrays in store.samples(hooks=[HOOK]):  # views into the memory map: copied, as a consumer would
        n += {name: np.array(a) for name, a in arrays.items()}["position"].shape[0]
    return n


@functools.cache
def _codes_fn():
    """One jitted function for the whole run (a new jax.jit per pass would compile every time)."""
    import jax

    from arclens.features.device import topk_codes
    from arclens.sae import encode

    return jax.jit(lambda s, x: topk_codes(s, x) if s.cfg.architecture == "topk" else encode(s, x))


def codes_pass(store, sae, batch_tokens: int) -> int:
    import jax
    import jax.numpy as jnp

    codes = _codes_fn()
    n = 0
    with jax.default_matmul_precision("float32"):
        for x in store.batches(HOOK, batch_size=batch_tokens, shuffle=False):
            jax.block_until_ready(codes(sae, jnp.asarray(x)))
            n += x.shape[0]
    return n


def source_pass(source, batch_tokens: int) -> int:
    n = 0
    for b in source.batches(batch_tokens):
        n += int(b.valid.sum())
        source.release(b)  # (as the command does once a batch is folded in: its buffer is reused)
    return n


def device_pass(source, sae, settings, batch_tokens: int) -> int:
    from arclens.features.accumulate import Accumulator
    from arclens.features.device import encode_batch

    acc = Accumulator(sae.cfg.d_sae, source.plan.group_sizes, top_k=1, n_intervals=1, per_interval=1,
                      tallies=settings.tallies)
    n = 0
    for b in source.batches(batch_tokens):
        _, _, resolve = acc.dispatch(b, *encode_batch(sae, b))
        resolve()  # (the pairs, and their intervals with device tallies, brought to the host)
        n += int(b.valid.sum())
        source.release(b)
    return n


def fold_pass(source, sae, settings, batch_tokens: int) -> tuple[int, dict]:
    """The host's part of the pass alone: every batch's device results (codes, stats and, with
    device tallies, the pairs' intervals) made first, untimed; then the pairs' cut into host
    arrays (`resolve`) and `Accumulator.fold` are timed. With device tallies this is what bounds the pass on an
    accelerator, whose own part is then nearly free."""
    import numpy as np

    from arclens.features.accumulate import Accumulator
    from arclens.features.device import encode_batch

    def accumulator(fold_workers):
        return Accumulator(sae.cfg.d_sae, source.plan.group_sizes, top_k=settings.top_k,
                           n_intervals=settings.quantiles, per_interval=settings.quantile_examples,
                           max_tokens=source.n_tokens, tallies=settings.tallies, fold_workers=fold_workers)

    import jax

    # (the device's part, by an accumulator of the same latent ranges: its workers are not used)
    ahead, ready = accumulator(settings.fold_workers), []
    ahead.close()
    for b in source.batches(batch_tokens):
        z, stats = encode_batch(sae, b)
        _, _, resolve = ahead.dispatch(b, z, stats)
        jax.block_until_ready((z, stats, ahead._tallies, getattr(resolve, "grouped", None)))
        ready.append((b, {k: np.asarray(v) for k, v in stats.items()}, resolve))
    acc = accumulator(settings.fold_workers)  # (its workers, if any, start before the clock)
    t0, cpu0 = time.perf_counter(), time.process_time()
    for b, stats, resolve in ready:  # the pairs brought into host arrays, then folded in
        acc.fold(b, stats, resolve())
    cpu = time.process_time() - cpu0
    acc.finish()  # (the workers' folds brought back and put together)
    seconds = time.perf_counter() - t0
    acc.close()
    parts = {"host folding alone": seconds}
    if acc.fold_workers > 1:  # what the parent itself spends (cutting, sending): the bound with many cores
        parts["  of which the parent's CPU"] = cpu
    return acc.n_tokens, parts


def main() -> int:
    from arclens.features.accumulate import TALLIES

    ap = argparse.ArgumentParser()
    ap.add_argument("--dest", default=os.path.join(tempfile.gettempdir(), "arclens-features-bench"))
    ap.add_argument("--tasks", type=int, default=40, help="first N tasks of arc-agi-1/training (8 prompts each)")
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--d-sae", type=int, default=2048)
    ap.add_argument("--arch", choices=["topk", "standard"], default="topk")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=2, help="passes per row; the best is reported")
    ap.add_argument("--tallies", choices=TALLIES, default="auto",
                    help="where features makes its per-pair counts (auto: the device unless it is the CPU)")
    ap.add_argument("--fold-workers", type=int, default=None,
                    help="processes folding on the host, a range of latents each (default: features' auto)")
    ap.add_argument("--host-only", action="store_true",
                    help="only the reads and the features source (no SAE): the host's stages an accelerator "
                         "does not speed up, at any --d-model in seconds")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import jax
    import numpy as np

    import arclens
    from arclens.features.run import FeaturesSettings, prepare_store, run

    root = Path(args.dest) / f"{args.tasks}t-{args.d_model}d"
    if not (root / "store" / "metadata.json").exists():
        t0 = time.perf_counter()
        build_store(root, args.tasks, args.d_model)
        print(f"wrote {root / 'store'} in {time.perf_counter() - t0:.1f} s")
    sae_dir = root / f"sae-{args.arch}-{args.d_sae}-k{args.k}"
    random_sae(sae_dir, args.d_model, args.d_sae, args.arch, args.k)
    store = arclens.open_store(str(root / "store"))
    settings = FeaturesSettings(sae=str(sae_dir), out=root / "fdir", store=str(root / "store"),
                                batch_tokens=args.batch_tokens, progress=False, tallies=args.tallies,
                                fold_workers=args.fold_workers)
    prepared = prepare_store(settings)
    print(f"{store.n_tokens:,} tokens of {HOOK} (d_model {args.d_model}, bf16) in {store.n_samples} samples; "
          f"SAE {args.arch} {args.d_model}->{args.d_sae}" + (f" k={args.k}" if args.arch == "topk" else "")
          + f"; batches of {args.batch_tokens}; {os.cpu_count()} CPUs; page cache warm; tallies {args.tallies}"
          + f"; fold workers {args.fold_workers or 'auto'}"
          + f" (JAX backend {jax.default_backend()})")

    def whole():
        summary = run(settings)
        return summary["n_tokens"], {"features pass (no files)": summary["pass_seconds"]}

    rows = [
        ("Store.batches (plain read)", lambda: plain_read(store, READ_BATCH)),
        ("Store.samples", lambda: samples_read(store)),
        ("features source", lambda: source_pass(prepared.source, args.batch_tokens)),
        ("plain read + SAE codes", lambda: codes_pass(store, prepared.sae, args.batch_tokens)),
        ("+ device step", lambda: device_pass(prepared.source, prepared.sae, settings, args.batch_tokens)),
        ("host folding (prepared)", lambda: fold_pass(prepared.source, prepared.sae, settings, args.batch_tokens)),
        ("arclens features", whole),
    ]
    if args.host_only:
        rows = rows[:3]
    plain_read(store, READ_BATCH)  # warm the page cache
    source_pass(prepared.source, args.batch_tokens)
    if not args.host_only:
        codes_pass(store, prepared.sae, args.batch_tokens)  # and compile every shape once
        device_pass(prepared.source, prepared.sae, settings, args.batch_tokens)
    # Round after round of every row, not each row's repeats in a row: on a shared machine the
    # load drifts, and rows measured side by side drift together.
    times: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for name, fn in rows:
            t0 = time.perf_counter()
            got = fn()
            seconds = time.perf_counter() - t0
            n, parts = got if isinstance(got, tuple) else (got, {})
            if n != store.n_tokens:
                raise SystemExit(f"{name}: {n} tokens, the store has {store.n_tokens}")
            for part, value in [*parts.items(), (name, seconds)]:
                times.setdefault(part, []).append(value)
    order = [name for name, _ in rows[:-2]] + ["host folding alone", "  of which the parent's CPU",
                                               "features pass (no files)", "arclens features"]
    if args.host_only:
        order = [name for name, _ in rows]
    order = [name for name in order if name in times]
    results = [{"run": name, "seconds": min(times[name]), "median_seconds": float(np.median(times[name])),
                "tokens_per_s": store.n_tokens / min(times[name])} for name in order]
    base, base_median = results[0]["seconds"], results[0]["median_seconds"]
    print(f"{'run (best of ' + str(args.repeats) + ')':<28} {'seconds':>8} {'tokens/s':>12} {'x read':>9}"
          f" {'ns/token':>9} {'median x read':>14}")
    for r in results:
        r["x_read"] = r["seconds"] / base
        r["median_x_read"] = r["median_seconds"] / base_median
        print(f"{r['run']:<28} {r['seconds']:>8.2f} {r['tokens_per_s']:>12,.0f} {r['x_read']:>8.1f}x"
              f" {r['seconds'] / store.n_tokens * 1e9:>9.0f} {r['median_x_read']:>13.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "n_tokens": store.n_tokens,
                                               "cpus": os.cpu_count(), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
