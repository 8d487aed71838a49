"""One process of a 2-process ExtractJob (tests/distributed/test_extract_multiprocess.py).

Run as ``python job_child.py OUT_DIR MODEL TASKS MESH`` with JAX_NUM_CPU_DEVICES and the
ARCLENS_COORDINATOR / ARCLENS_NUM_PROCESSES / ARCLENS_PROCESS_ID deployment variables set. The job
runs the tasks into ``OUT_DIR/store``, then yields the same tasks as device batches (permuted); for
every batch it records the keys of the rows this process feeds, and the captures of the rows whose
replica 0 is on its own devices (read from the device arrays' local shards, as a consumer on the
device sees them), in ``OUT_DIR/batches-p{process_id}.npz``.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")

import numpy as np

from arclens.data.loaders import load_tasks
from arclens.distributed.runtime import initialize, local_rows
from arclens.pipeline.job import ExtractJob
from arclens.pipeline.settings import CaptureSettings, ExtractSettings, StoreSettings
from arclens.prompts import PromptConfig

HOOKS = ["blocks.1.hook_resid_post", "blocks.3.hook_mlp_out"]

out_dir, model, tasks_path, mesh = sys.argv[1:5]
runtime = initialize()  # the place in the job comes from the deployment variables
assert runtime.num_processes == 2, runtime
capture = CaptureSettings.load(model, HOOKS, prompt=PromptConfig(predictions_per_task=2), dtype="float32",
                               tokens_per_batch=512, mesh=mesh)
settings = ExtractSettings(capture, StoreSettings(dest=os.path.join(out_dir, "store"), shard_bytes=300_000))
tasks = load_tasks(tasks_path)
fed, arrays = [], {}
with ExtractJob(settings, runtime) as job:
    summary = job.run(tasks, progress=False)
    assert summary.complete, summary
    for b in job.device_batches(tasks, order_seed=7):
        fed.append([b.index, sorted(s.key for s in b.samples.values())])
        for hook in HOOKS:
            for rows, data in local_rows(b.captures[hook]):
                for r in range(rows.start, rows.stop):
                    if (sample := b.samples.get(r)) is not None:
                        arrays[f"{sample.key}|{hook}"] = data[r - rows.start, : len(sample.token_ids)]
np.savez(os.path.join(out_dir, f"batches-p{runtime.process_id}.npz"), fed=json.dumps(fed), **arrays)
print(f"process {runtime.process_id}: {summary.samples} samples written, {len(fed)} batches", flush=True)
