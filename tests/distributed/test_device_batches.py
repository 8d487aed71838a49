"""ExtractJob.device_batches as 2 processes x 2 CPU devices (jax.distributed on localhost): every
row of every batch is fed by exactly one process, the processes agree on the (permuted) batch
order, and the captures they hold equal a 1-process run's (float32; the batches differ in width,
4 data-parallel rows against 1, so only to float rounding)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tests.support.cli import cli_env, free_port
from tests.support.tasks import write_small_tasks

CHILD = Path(__file__).with_name("job_child.py")
HOOKS = ["blocks.1.hook_resid_post", "blocks.3.hook_mlp_out"]


@pytest.mark.slow
def test_two_processes_feed_every_row_once(tmp_path, tiny_model_dir):
    from arclens.data.loaders import load_tasks
    from arclens.pipeline.job import ExtractJob
    from arclens.pipeline.settings import CaptureSettings
    from arclens.prompts import PromptConfig

    tasks = write_small_tasks(tmp_path / "tasks.json", n_tasks=5)
    coordinator = f"127.0.0.1:{free_port()}"
    procs = [subprocess.Popen([sys.executable, str(CHILD), str(tmp_path / "out"), str(tiny_model_dir), str(tasks)],
                              env=cli_env(JAX_NUM_CPU_DEVICES=2, ARCLENS_COORDINATOR=coordinator,
                                          ARCLENS_NUM_PROCESSES=2, ARCLENS_PROCESS_ID=i),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    # Meanwhile, the reference in this process (one CPU device).
    capture = CaptureSettings.load(str(tiny_model_dir), HOOKS, prompt=PromptConfig(predictions_per_task=2),
                                   dtype="float32", tokens_per_batch=512)
    reference = {}
    with ExtractJob(capture) as job:
        for b in job.device_batches(load_tasks(str(tasks))):
            for row, sample in b.samples.items():
                for hook in HOOKS:
                    reference[sample.key, hook] = np.asarray(b.captures[hook][row, : len(sample.token_ids)])
    try:
        for p in procs:
            out, _ = p.communicate(timeout=240)
            assert p.returncode == 0, out[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    runs = [np.load(tmp_path / "out" / f"batches-p{i}.npz") for i in range(2)]
    fed = [json.loads(str(r["fed"])) for r in runs]
    assert [i for i, _ in fed[0]] == [i for i, _ in fed[1]] == list(range(len(fed[0])))  # one order
    keys = [k for run in fed for _, batch in run for k in batch]
    all_keys = sorted({k for k, _ in reference})
    assert sorted(keys) == all_keys and len(keys) == len(set(keys)) == 10  # each row fed once
    held = {}
    for r in runs:
        for name in r.files:
            if name != "fed":
                assert name not in held, f"{name} read back by both processes"
                held[name] = r[name]
    assert len(held) == len(reference)
    for (key, hook), want in reference.items():
        np.testing.assert_allclose(held[f"{key}|{hook}"], want, rtol=1e-5, atol=1e-5 * np.abs(want).max(),
                                   err_msg=f"{key} {hook}")
