#!/usr/bin/env python3
"""Where does extraction time go on an accelerator? A breakdown, each step timed alone.

    PYTHONPATH=src python3 benchmarks/device_probe.py [--preset 0.5b] [--shapes 16x2048 8x4096]

For each batch shape it measures, on a RANDOM-weight checkpoint with 4 resid_post hooks:
  compute    the jitted capture, outputs left on the device (block_until_ready)
  sync-d2h   compute, then np.asarray of every capture (no overlap)
  pipelined  the next batch dispatched before the previous one's captures are read, with
             copy_to_host_async started at dispatch (what pipeline/device.py does)
  pinned_host  the same, with the outputs placed in pinned host memory by the program itself
             (--capture-memory pinned_host)
plus the one-shape compile time and the raw device-to-host bandwidth of a 256 MB bf16 array,
into pageable numpy memory and into pinned host memory.
Prints a table; with $OUT set also writes device_probe.json there.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="0.5b")
    ap.add_argument("--shapes", nargs="+", default=["16x2048", "32x1024", "8x4096"])
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--attn", default="auto")
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp
    import numpy as np

    from arclens.model.config import QwenConfig
    from arclens.model.hooks import parse_hooks
    from arclens.model.loading import load_params
    from arclens.model.qwen import forward
    from arclens.model.random_checkpoint import write_random_model

    tmp = tempfile.mkdtemp(prefix="arclens-probe-")
    model_dir = write_random_model(os.path.join(tmp, "m"), preset=args.preset, seed=0)
    config = QwenConfig.from_pretrained(model_dir)
    params = load_params(model_dir, config, dtype=jnp.bfloat16)
    n = config.n_layers
    layers = sorted({n // 4, n // 2, (3 * n) // 4, n - 1})
    hooks = parse_hooks([f"blocks.{i}.hook_resid_post" for i in layers], n)
    results = {"device": str(jax.devices()[0].device_kind), "jax": jax.__version__, "preset": args.preset,
               "hooks": [h.name for h in hooks], "shapes": {}}

    def capture(params, tokens, lengths):
        return forward(params, config, tokens, lengths, hooks=hooks, attn_impl=args.attn)

    jitted = jax.jit(capture)
    rng = np.random.default_rng(0)

    # Raw D2H bandwidth.
    big = jnp.ones((128 * 1024 * 1024,), jnp.bfloat16)
    big.block_until_ready()
    t0 = time.perf_counter()
    np.asarray(big)
    results["d2h_GBps_first"] = big.nbytes / (time.perf_counter() - t0) / 1e9
    big2 = big + 1
    big2.block_until_ready()
    big2.copy_to_host_async()
    t0 = time.perf_counter()
    np.asarray(big2)
    results["d2h_GBps_after_async"] = big2.nbytes / (time.perf_counter() - t0) / 1e9
    try:  # the same copy into pinned host memory, as a transfer XLA schedules itself
        pinned = jax.sharding.SingleDeviceSharding(jax.devices()[0], memory_kind="pinned_host")
        big3 = jnp.ones((128 * 1024 * 1024,), jnp.bfloat16) + 2
        big3.block_until_ready()
        t0 = time.perf_counter()
        jax.device_put(big3, pinned).block_until_ready()
        results["d2h_GBps_pinned_host"] = big3.nbytes / (time.perf_counter() - t0) / 1e9
        del big3
    except Exception as err:  # noqa: BLE001 - a backend without pinned host memory is a finding
        results["d2h_GBps_pinned_host"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    del big, big2
    try:
        jitted_pinned = jax.jit(capture, out_shardings=jax.sharding.SingleDeviceSharding(
            jax.devices()[0], memory_kind="pinned_host"))
    except Exception:  # noqa: BLE001
        jitted_pinned = None

    for spec in args.shapes:
        b, t = (int(x) for x in spec.split("x"))
        tokens = [jnp.asarray(rng.integers(0, 400, size=(b, t), dtype=np.int32)) for _ in range(2)]
        lengths = jnp.full((b,), t, jnp.int32)
        t0 = time.perf_counter()
        compiled = jitted.lower(params, tokens[0], lengths).compile()
        compile_s = time.perf_counter() - t0
        for _ in range(2):
            jax.block_until_ready(compiled(params, tokens[0], lengths))
        r = {"compile_s": compile_s}

        t0 = time.perf_counter()
        for i in range(args.iters):
            out = compiled(params, tokens[i % 2], lengths)
        jax.block_until_ready(out)
        r["compute_tok_s"] = args.iters * b * t / (time.perf_counter() - t0)

        t0 = time.perf_counter()
        for i in range(args.iters):
            out = compiled(params, tokens[i % 2], lengths)
            host = {k: np.asarray(v) for k, v in out.items()}
        r["sync_d2h_tok_s"] = args.iters * b * t / (time.perf_counter() - t0)
        r["capture_MB_per_batch"] = sum(v.nbytes for v in host.values()) / 1e6

        t0 = time.perf_counter()
        prev = None
        for i in range(args.iters + 1):
            cur = None
            if i < args.iters:
                cur = compiled(params, tokens[i % 2], lengths)
                for v in cur.values():
                    v.copy_to_host_async()
            if prev is not None:
                host = {k: np.asarray(v) for k, v in prev.items()}
            prev = cur
        r["pipelined_tok_s"] = args.iters * b * t / (time.perf_counter() - t0)

        # pinned_host outputs (--capture-memory pinned_host): the program writes the
        # captures to host memory itself; reading them is then a host-memory read.
        try:
            cp = jitted_pinned.lower(params, tokens[0], lengths).compile()
            jax.block_until_ready(cp(params, tokens[0], lengths))
            t0 = time.perf_counter()
            prev = None
            for i in range(args.iters + 1):
                cur = cp(params, tokens[i % 2], lengths) if i < args.iters else None
                if prev is not None:
                    host = {k: np.asarray(v) for k, v in prev.items()}
                prev = cur
            r["pinned_host_tok_s"] = args.iters * b * t / (time.perf_counter() - t0)
        except Exception as err:  # noqa: BLE001
            r["pinned_host_error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
        results["shapes"][spec] = r
        print(spec, {k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()}, flush=True)

    print(json.dumps(results, indent=1))
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "device_probe.json"), "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
