"""ExtractJob as 2 processes x 2 CPU devices (jax.distributed on localhost, a (2,2) mesh: data
across the processes, model inside each): `run` stores the same samples with the same activations
as a 1-process run, each process writing its own shards; `device_batches` then feeds every row
of every batch from exactly one process, in one (permuted) order, holding on the device exactly
what `run` stored. (The command line over several processes: test_worker_multiprocess.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tests.support.cli import cli_env, free_port
from tests.support.stores import stored
from tests.support.tasks import write_small_tasks

from arclens.cli import main

CHILD = Path(__file__).with_name("job_child.py")
HOOKS = ["blocks.1.hook_resid_post", "blocks.3.hook_mlp_out"]


@pytest.mark.slow
def test_two_processes_equal_one_and_feed_every_row_once(tmp_path, tiny_model_dir, capsys):
    from arclens.data.loaders import load_tasks
    from arclens.pipeline.job import ExtractJob
    from arclens.pipeline.settings import CaptureSettings, ExtractSettings, StoreSettings
    from arclens.prompts import PromptConfig

    tasks = write_small_tasks(tmp_path / "tasks.json", n_tasks=6)
    coordinator = f"127.0.0.1:{free_port()}"
    out = tmp_path / "mp"
    procs = [subprocess.Popen([sys.executable, str(CHILD), str(out), str(tiny_model_dir), str(tasks), "2,2"],
                              env=cli_env(JAX_NUM_CPU_DEVICES=2, ARCLENS_COORDINATOR=coordinator,
                                          ARCLENS_NUM_PROCESSES=2, ARCLENS_PROCESS_ID=i),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    # Meanwhile, the reference in this process (one CPU device).
    capture = CaptureSettings.load(str(tiny_model_dir), HOOKS, prompt=PromptConfig(predictions_per_task=2),
                                   dtype="float32", tokens_per_batch=512)
    with ExtractJob(ExtractSettings(capture, StoreSettings(dest=str(tmp_path / "ref")))) as job:
        assert job.run(load_tasks(str(tasks)), progress=False).complete
    try:
        for p in procs:
            log, _ = p.communicate(timeout=300)
            assert p.returncode == 0, log[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    ref, got = stored(tmp_path / "ref"), stored(out / "store")
    assert sorted(got) == sorted(ref) and len(ref) == 12
    for key, (_, arrays) in ref.items():
        assert set(got[key][1]) == set(arrays)
        for name, want in arrays.items():
            if name.startswith("blocks."):  # other batch widths (4 data-parallel rows): float rounding only
                np.testing.assert_allclose(got[key][1][name], want, rtol=1e-5, atol=1e-5 * np.abs(want).max(),
                                           err_msg=f"{key} {name}")
            elif name != "sample":  # "sample": the row in its shard's table, which differs between stores
                np.testing.assert_array_equal(got[key][1][name], want, err_msg=f"{key} {name}")
    # Both processes wrote shards of their own rows into the one store; nothing went through one host.
    shards = [p.name for p in (out / "store" / "shards").iterdir()]
    assert any("-p0-" in n for n in shards) and any("-p1-" in n for n in shards), shards
    assert main(["verify", str(out / "store")]) == 0
    assert "OK" in capsys.readouterr().out

    runs = [np.load(out / f"batches-p{i}.npz") for i in range(2)]
    fed = [json.loads(str(r["fed"])) for r in runs]
    assert [i for i, _ in fed[0]] == [i for i, _ in fed[1]] == list(range(len(fed[0])))  # one order
    keys = [k for run in fed for _, batch in run for k in batch]
    assert sorted(keys) == sorted(ref) and len(keys) == len(set(keys))  # every row fed by exactly one process
    held = {}
    for r in runs:
        for name in r.files:
            if name != "fed":
                assert name not in held, f"{name} read back by both processes"
                held[name] = r[name]
    assert len(held) == len(ref) * len(HOOKS)
    for key, (_, arrays) in got.items():  # the same program on the same batches: bit for bit
        for hook in HOOKS:
            np.testing.assert_array_equal(held[f"{key}|{hook}"], arrays[hook], err_msg=f"{key} {hook}")
