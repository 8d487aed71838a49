"""The on-the-fly shuffle over a data-parallel mesh, in a fresh process (the device count is fixed
at JAX start-up).

``python shuffle_child.py N_CPU_DEVICES MESH[,MESH...] OUT.json [COORDINATOR N_PROCESSES PROCESS_ID]``.
For each mesh it takes nearly three passes of training batches from ``tests.support.fly_forward`` and writes,
per batch, the token ids it holds (in the batch's row order), its sharding and the carry's counts,
plus whether a resume from each of a few checkpointed positions continues with the same batches,
and the bytes every device holds once the first batch is out (a larger window, for that alone).
Every process computes the same; the first writes ``OUT.json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

n_devices, mesh_specs, out_file = sys.argv[1:4]
os.environ["JAX_NUM_CPU_DEVICES"] = n_devices
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from tests.support.fly_forward import H1, H2, FakeForward

from arclens.distributed.mesh import make_mesh
from arclens.distributed.runtime import ProcessSettings, initialize
from arclens.sae.shuffle import DeviceShuffle
from arclens.sae.trainer import to_host

process = ProcessSettings.from_flags(sys.argv[4], int(sys.argv[5]), int(sys.argv[6])) if len(sys.argv) > 4 else None
runtime = initialize(process)
BATCH, WINDOW, SKIPS = 16, 4, (1, 5, 9, 17, 40)


def placer(mesh):
    def place(x, kind):
        spec = PartitionSpec("data", *(None,) * (x.ndim - 1))
        return jax.make_array_from_callback(x.shape, NamedSharding(mesh, spec), lambda idx: x[idx])
    return place


def shuffle(mesh, **kw):
    return DeviceShuffle([H1, H2], seed=0, batch_sharding=NamedSharding(mesh, PartitionSpec("data", None)), **kw)


def take(sh, forward, n, position=None):
    out = []
    for batch, pos in sh.batches(forward, position):
        out.append(({h: to_host(v) for h, v in batch.items()}, pos, str(batch[H1].sharding.spec)))
        if len(out) == n:
            return out
    return out


def run(spec: str) -> dict:
    data, model = (int(x) for x in spec.split(","))
    mesh = make_mesh(spec, devices=jax.devices()[:data * model])  # the first devices, across processes
    forward = FakeForward(place=placer(mesh))
    n = 3 * (forward.n_tokens() // BATCH)  # into the third pass
    got = take(shuffle(mesh, batch_tokens=BATCH, window_batches=WINDOW), forward, n)
    resumed = []
    for skip in SKIPS:
        sh = shuffle(mesh, batch_tokens=BATCH, window_batches=WINDOW)
        doc, arrays = sh.position_to_checkpoint(got[skip - 1][1])
        restored = sh.position_from_checkpoint(json.loads(json.dumps(doc)), {k: np.array(v) for k, v in arrays.items()})
        again = take(sh, FakeForward(place=placer(mesh)), 6, restored)
        resumed.append(len(again) == 6 and all(np.array_equal(a[0][h], b[0][h]) for a, b in zip(got[skip:], again)
                                                for h in (H1, H2)))
    # The bytes each device holds with the first batch of a larger window out.
    big = FakeForward(rows=8, length=512, width=64, n_forward=8, place=placer(mesh))
    stream = shuffle(mesh, batch_tokens=256, window_batches=8).batches(big)
    first = next(stream)
    held = {}
    for a in jax.live_arrays():
        for s in a.addressable_shards:
            held[s.device.id] = held.get(s.device.id, 0) + s.data.nbytes
    del first, stream
    return {"ids": [b[H1][:, 0].astype(np.int64).tolist() for b, _, _ in got],
            "negated": all(np.array_equal(b[H2], -b[H1]) for b, _, _ in got),
            "shardings": sorted({s for _, _, s in got}), "epochs": [p.epoch for _, p, _ in got],
            "carry_counts": [list(p.carry_counts) for _, p, _ in got],
            "tokens": sorted(forward.tokens()), "resumed": resumed, "bytes_per_device": max(held.values())}


result = {spec: run(spec) for spec in mesh_specs.split(";")}
if runtime.process_id == 0:
    Path(out_file).write_text(json.dumps(result))
print(f"process {runtime.process_id}/{runtime.num_processes}: {', '.join(result)}", flush=True)
