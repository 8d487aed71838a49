#!/usr/bin/env python3
"""How much device memory does the on-the-fly shuffle buffer take? ``sae.shuffle.DeviceShuffle``
at several data widths, in one run.

    PYTHONPATH=src python3 benchmarks/shuffle_memory.py [--devices 4] [--widths 1,2,4] [--window 16]
        [--tokens-per-batch 4096] [--length 512] [--d-model 896] [--batch-tokens 4096] [--json OUT]

Each data width D gets a mesh of D x 1 devices and a stream of synthetic forward batches: every
device's rows hold ``--tokens-per-batch`` tokens (``--length`` per row, all valid, bf16 of width
``--d-model``), a window is ``--window`` forward batches. Once the first training batch is out,
the bytes of every live array are summed per device (the forward's own captures still alive are
in them); the row reports the device holding most. Beside it, two sizes from the settings:

- ``one share``: a device's own share of the window, its rows' tokens x d_model x 2 bytes. The
  sharded buffer holds about this much while the window's batches are cut.
- ``whole window``: the window of the whole mesh, D shares. A buffer replicated over the data
  axis (arclens before the deal, docs/SAE.md) holds at least this much on every device; that code
  held two of them while the window's batches were cut (docs/BENCHMARKS.md).

``--devices`` forces that many CPU devices (``JAX_NUM_CPU_DEVICES``) unless ``--platform`` says
otherwise; on an accelerator pass ``--platform gpu`` or ``tpu`` and widths up to its device count.
"""

from __future__ import annotations

import argparse
import json
import os


def measure(width: int, args) -> dict:
    import jax
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec

    from arclens.distributed.mesh import make_mesh
    from arclens.sae.shuffle import DeviceShuffle

    mesh = make_mesh(f"{width},1", devices=jax.devices()[:width])
    rows = max(1, args.tokens_per_batch // args.length) * width
    captures = jax.make_array_from_callback(
        (rows, args.length, args.d_model), NamedSharding(mesh, PartitionSpec("data", None, None)),
        lambda idx: np.ones((rows, args.length, args.d_model), np.float32)[idx].astype(jax.numpy.bfloat16))
    valid = jax.make_array_from_callback((rows, args.length), NamedSharding(mesh, PartitionSpec("data", None)),
                                         lambda idx: np.ones((rows, args.length), bool)[idx])

    def forward(epoch, start):
        for _ in range(start, args.window):
            yield {"h": captures + 0}, valid  # a fresh capture a batch, as the forward makes them

    shuffle = DeviceShuffle(["h"], batch_tokens=args.batch_tokens, seed=0, window_batches=args.window,
                            dtype="bfloat16", batch_sharding=NamedSharding(mesh, PartitionSpec("data", None)))
    stream = shuffle.batches(forward)
    first = next(stream)
    jax.block_until_ready(first[0])
    held: dict[int, int] = {}
    for a in jax.live_arrays():
        for s in a.addressable_shards:
            held[s.device.id] = held.get(s.device.id, 0) + s.data.nbytes
    stream.close()
    share = args.window * (rows // width) * args.length * args.d_model * 2
    return {"data_width": width, "bytes_per_device": max(held.values()), "one_share": share,
            "whole_window": share * width}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=4, help="CPU devices to force (default 4)")
    p.add_argument("--platform", default="cpu")
    p.add_argument("--widths", default="1,2,4", help="data widths, comma-separated")
    p.add_argument("--window", type=int, default=16, help="forward batches a window (--shuffle-window)")
    p.add_argument("--tokens-per-batch", type=int, default=4096, help="each device's forward batch")
    p.add_argument("--length", type=int, default=512, help="tokens a row")
    p.add_argument("--d-model", type=int, default=896)
    p.add_argument("--batch-tokens", type=int, default=4096, help="training batch (--batch-tokens)")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args()
    os.environ["JAX_PLATFORMS"] = args.platform
    if args.platform == "cpu":
        os.environ["JAX_NUM_CPU_DEVICES"] = str(args.devices)
    import jax

    widths = [int(w) for w in args.widths.split(",")]
    rows = [measure(w, args) for w in widths]
    mib = 2 ** 20
    print(f"device: {jax.devices()[0].device_kind} x {len(jax.devices())}, jax {jax.__version__}; window "
          f"{args.window} x {args.tokens_per_batch} tokens a device, d_model {args.d_model}, bf16")
    print(f"{'data width':>10} {'MiB a device':>13} {'one share':>10} {'whole window':>13}")
    for r in rows:
        print(f"{r['data_width']:>10} {r['bytes_per_device'] / mib:>13,.0f} {r['one_share'] / mib:>10,.0f} "
              f"{r['whole_window'] / mib:>13,.0f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": vars(args), "rows": rows}, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
