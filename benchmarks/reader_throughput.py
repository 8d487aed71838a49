#!/usr/bin/env python3
"""How fast does a store feed an SAE trainer? ``Store.batches`` beside plain numpy on the same
shards, in one run.

    PYTHONPATH=src python3 benchmarks/reader_throughput.py [--dest DIR] [--gb 2] [--batch-size 4096]

The store is 0.5B-shaped (4 bf16 hooks of d_model 896, 1,600-token samples, --shard-mb shards),
written once under --dest and reused by later runs with the same shape. One hook is read, as an
SAE trainer reads it. Each row of the table is one pass over every token of that hook:

- ``numpy memmap, stored order``: the baseline. The hook's bytes of every shard, copied out of the
  memory map into one array per batch by numpy alone: what any reader must at least pay.
- ``numpy memmap, shuffled``: the same plus a uniform permutation within windows of
  --buffer-shards shards, done the straightforward way (concatenate the window, permute it, slice
  batches): what a hand-written shuffling reader costs.
- ``Store.batches``: arclens's reader, with and without shuffle (same windows).
- ``+ step``: the shuffled rows again, with a stand-in accelerator trainer that waits --step-ms
  per batch for its device (2 ms per 4,096 tokens is a trainer consuming 2M tokens/s): shows
  whether the next batch is made while the trainer waits. A reader that overlaps runs at the
  slower of the two rates; one that does not runs at their harmonic sum.

The page cache is warm for every row (the store was just written or read), so this measures the
reader's CPU cost, not the disk: on a cold cache every row is bounded by the disk instead.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

HOOKS = [f"blocks.{i}.hook_resid_post" for i in (6, 12, 18, 23)]
D = 896


def build_store(dest: str, gb: float, shard_mb: float, n: int) -> None:
    import ml_dtypes
    import numpy as np

    from arclens.store.writer import StoreWriter, open_or_create_store

    rng = np.random.default_rng(0)
    block = {h: rng.standard_normal((16 * n, D), dtype=np.float32).astype(ml_dtypes.bfloat16) for h in HOOKS}
    cols = {"position": np.arange(n, dtype=np.int32), "token_id": np.zeros(n, np.int32),
            "grid": np.full(n, -1, np.int16), "row": np.full(n, -1, np.int16), "col": np.full(n, -1, np.int16)}
    bytes_per_token = len(HOOKS) * D * 2 + 4 + 4 + 2 + 2 + 2 + 4
    n_samples = max(1, int(gb * 1e9 / (bytes_per_token * n)))
    meta = {"model": {"name": "bench"}, "hooks": HOOKS, "dtype": "bfloat16", "d_model": D, "positions": "all",
            "prompt": {}, "tasks": {"source": "synthetic", "count": n_samples}}
    open_or_create_store(dest, meta)
    with StoreWriter(dest, "bench", shard_bytes=int(shard_mb * 2**20)) as w:
        for i in range(n_samples):
            r = (i % 16) * n
            w.add({"key": f"t{i}/0/0", "task_id": f"t{i}", "test_index": 0, "augmentation": {},
                   "prompt_tokens": n}, {h: block[h][r:r + n] for h in HOOKS} | cols)


def trainer_step(ms: float):
    """A stand-in for an accelerator trainer's step: the host waits ``ms`` for the device (a
    sleep, which like a device wait releases the GIL) and computes nothing itself."""
    def step(batch):
        time.sleep(ms / 1e3)

    return step


def numpy_pass(store, hook: str, batch_size: int, shuffle: bool, buffer_shards: int, seed: int = 0, step=None):
    """The baseline readers: every token of ``hook`` once, in batches, with numpy alone."""
    import numpy as np

    rng = np.random.default_rng(seed)
    views = [store.shards[i] for i in rng.permutation(len(store.shards))] if shuffle else list(store.shards)
    windows = [views[i:i + buffer_shards] for i in range(0, len(views), buffer_shards)] if shuffle \
        else [[v] for v in views]
    n = 0
    for window in windows:
        parts = [v.file.read([hook])[hook] for v in window]
        pool = np.concatenate(parts) if shuffle else parts[0]
        if shuffle:
            pool = pool[rng.permutation(pool.shape[0])]
        for i in range(0, pool.shape[0], batch_size):
            batch = np.array(pool[i:i + batch_size])
            n += batch.shape[0]
            if step is not None:
                step(batch)
    return n


def arclens_pass(store, hook: str, batch_size: int, shuffle: bool, buffer_shards: int, step=None) -> int:
    n = 0
    for batch in store.batches(hook, batch_size=batch_size, shuffle=shuffle, buffer_shards=buffer_shards):
        n += batch.shape[0]
        if step is not None:
            step(batch)
    return n


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dest", default=os.path.join(tempfile.gettempdir(), "arclens-reader-bench"))
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--shard-mb", type=float, default=256)
    ap.add_argument("--tokens-per-sample", type=int, default=1600)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--buffer-shards", type=int, default=4)
    ap.add_argument("--step-ms", type=float, default=2.0,
                    help="the stand-in trainer's device time per batch in the '+ step' rows (0: no such rows)")
    ap.add_argument("--repeats", type=int, default=3, help="passes per row; the best is reported")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from arclens.store.reader import open_store

    dest = os.path.join(args.dest, f"{args.gb:g}gb-{args.shard_mb:g}mb-{args.tokens_per_sample}")
    if not os.path.exists(os.path.join(dest, "metadata.json")):
        t0 = time.perf_counter()
        build_store(dest, args.gb, args.shard_mb, args.tokens_per_sample)
        print(f"wrote {dest} in {time.perf_counter() - t0:.1f} s")
    store = open_store(dest)
    hook = HOOKS[0]
    token_bytes = D * 2
    print(f"{store.n_tokens:,} tokens of {hook} ({store.n_tokens * token_bytes / 1e9:.2f} GB) in "
          f"{len(store.shards)} shards; batch {args.batch_size}, windows of {args.buffer_shards} shards; "
          f"{os.cpu_count()} CPUs; page cache warm")

    runs = [
        ("numpy memmap, stored order", lambda: numpy_pass(store, hook, args.batch_size, False, args.buffer_shards)),
        ("Store.batches, stored order", lambda: arclens_pass(store, hook, args.batch_size, False, args.buffer_shards)),
        ("numpy memmap, shuffled", lambda: numpy_pass(store, hook, args.batch_size, True, args.buffer_shards)),
        ("Store.batches, shuffled", lambda: arclens_pass(store, hook, args.batch_size, True, args.buffer_shards)),
    ]
    if args.step_ms:
        step = trainer_step(args.step_ms)
        runs += [
            ("numpy memmap, shuffled + step",
             lambda: numpy_pass(store, hook, args.batch_size, True, args.buffer_shards, step=step)),
            ("Store.batches, shuffled + step",
             lambda: arclens_pass(store, hook, args.batch_size, True, args.buffer_shards, step=step)),
        ]
    numpy_pass(store, hook, args.batch_size, False, args.buffer_shards)  # warm the page cache
    results = []
    for name, run in runs:
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            n = run()
            best = min(best, time.perf_counter() - t0)
        if n != store.n_tokens:
            raise SystemExit(f"{name}: read {n} tokens, the store has {store.n_tokens}")
        results.append({"run": name, "seconds": best, "tokens_per_s": n / best, "gb_per_s": n * token_bytes / best / 1e9})

    base = {r["run"].replace("Store.batches", "numpy memmap"): r["tokens_per_s"] for r in results
            if r["run"].startswith("numpy")}
    print(f"{'run':<32} {'tokens/s':>14} {'GB/s':>7} {'vs numpy':>9}")
    for r in results:
        ratio = r["tokens_per_s"] / base[r["run"].replace("Store.batches", "numpy memmap")]
        r["vs_numpy"] = ratio
        print(f"{r['run']:<32} {r['tokens_per_s']:>14,.0f} {r['gb_per_s']:>7.2f} {ratio:>8.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "n_tokens": store.n_tokens, "cpus": os.cpu_count(), "results": results},
                      f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
