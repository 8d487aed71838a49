#!/usr/bin/env python3
"""How fast can the store take activations? StoreWriter on local disk, shards published inline
(publish_threads=0, `--publish-threads 0`) beside the background pool, in one run on the same data.

    PYTHONPATH=src python3 benchmarks/store_write_throughput.py [--dest DIR] [--gb 4] [--threads 0 2 4]

The workload is 0.5B-shaped: 4 bf16 hooks of d_model 896, ARC-sized samples of 1,600 tokens,
1 GB shards (the default), so one token is 7,182 bytes. Each run writes --gb of activations to
a fresh store under --dest and reports GB/s and tokens/s, counting the fsyncs and the commits.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dest", default=None, help="a folder on the disk to measure (default: a temp dir)")
    ap.add_argument("--gb", type=float, default=4.0)
    ap.add_argument("--threads", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--shard-mb", type=float, default=1024)
    ap.add_argument("--tokens-per-sample", type=int, default=1600)
    args = ap.parse_args()

    import ml_dtypes
    import numpy as np

    from arclens.store.writer import StoreWriter, open_or_create_store

    hooks = [f"blocks.{i}.hook_resid_post" for i in (6, 12, 18, 23)]
    d, n = 896, args.tokens_per_sample
    rng = np.random.default_rng(0)
    # One batch-sized block of random bf16 rows, sliced per sample as the pipeline does (views).
    block = {h: rng.standard_normal((16 * n, d), dtype=np.float32).astype(ml_dtypes.bfloat16) for h in hooks}
    cols = {"position": np.arange(n, dtype=np.int32), "token_id": np.zeros(n, np.int32),
            "grid": np.full(n, -1, np.int16), "row": np.full(n, -1, np.int16), "col": np.full(n, -1, np.int16)}
    bytes_per_token = len(hooks) * d * 2 + 4 + 4 + 2 + 2 + 2 + 4
    n_samples = int(args.gb * 1e9 / (bytes_per_token * n))
    root = args.dest or tempfile.mkdtemp(prefix="arclens-store-bench-")
    print(f"{n_samples} samples x {n} tokens = {n_samples * n * bytes_per_token / 1e9:.2f} GB per run, "
          f"shards of {args.shard_mb:.0f} MB, into {root} ({os.cpu_count()} CPUs)")
    meta = {"model": {"name": "bench"}, "hooks": hooks, "dtype": "bfloat16", "d_model": d, "positions": "all",
            "prompt": {}, "tasks": {"source": "synthetic", "count": n_samples}}
    for threads in args.threads:
        dest = os.path.join(root, f"t{threads}")
        shutil.rmtree(dest, ignore_errors=True)
        open_or_create_store(dest, meta)
        t0 = time.perf_counter()
        with StoreWriter(dest, "bench", shard_bytes=int(args.shard_mb * 2**20), publish_threads=threads) as w:
            for i in range(n_samples):
                r = (i % 16) * n
                arrays = {h: block[h][r:r + n] for h in hooks} | cols
                w.add({"key": f"t{i}/0/0", "task_id": f"t{i}", "test_index": 0, "augmentation": {},
                       "prompt_tokens": n}, arrays)
        dt = time.perf_counter() - t0
        total = sum(c.bytes for c in w.commits)
        print(f"publish_threads={threads}: {total / dt / 1e9:.2f} GB/s, {n_samples * n / dt:,.0f} tokens/s "
              f"({len(w.commits)} shards in {dt:.1f}s)", flush=True)
        shutil.rmtree(dest, ignore_errors=True)
    if not args.dest:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
