"""`arclens extract` as 2 processes x 2 CPU devices with jax.distributed on a (2,2) mesh stores the
same samples with the same activations as a 1-process run, each process writing its own shards.
So does a 2-process job that is one independent worker (a multi-host slice in a worker fleet:
process 0 claims each unit and broadcasts it)."""

from __future__ import annotations

import numpy as np
import pytest
from tests.support.cli import free_port, start_cli, wait_ok
from tests.support.stores import stored
from tests.support.tasks import write_small_tasks

from arclens.cli import main

OPTIONS = ["--layers", "1", "3", "--activation", "residual", "mlp", "--predictions-per-task", "2",
           "--dtype", "float32", "--tokens-per-batch", "1024", "--shard-mb", "0.5"]


@pytest.mark.slow
def test_two_processes_on_a_2x2_mesh_equal_one_process(tmp_path, tiny_model_dir, capsys):
    tasks = write_small_tasks(tmp_path / "tasks.json", n_tasks=6)
    common = ["extract", "--model", tiny_model_dir, "--tasks", tasks, *OPTIONS]
    coordinator = f"127.0.0.1:{free_port()}"
    logs = [tmp_path / f"p{i}.log" for i in range(2)]
    procs = [
        start_cli([*common, "--out", tmp_path / "mp", "--mesh", "2,2", "--coordinator", coordinator,
                   "--num-processes", "2", "--process-id", str(i)], logs[i], JAX_NUM_CPU_DEVICES=2)
        for i in range(2)
    ]
    reference_log = tmp_path / "ref.log"
    reference = start_cli([*common, "--out", tmp_path / "ref"], reference_log)
    wait_ok([*procs, reference], [*logs, reference_log])

    coordinator = f"127.0.0.1:{free_port()}"
    worker_logs = [tmp_path / f"w{i}.log" for i in range(2)]
    # This job takes its place from the environment instead of flags.
    worker = [
        start_cli([*common, "--out", tmp_path / "worker", "--num-workers", "1", "--worker-id", "0",
                   "--tasks-per-unit", "2"], worker_logs[i],
                  JAX_NUM_CPU_DEVICES=1, ARCLENS_COORDINATOR=coordinator,
                  ARCLENS_NUM_PROCESSES=2, ARCLENS_PROCESS_ID=i)
        for i in range(2)
    ]
    wait_ok(worker, worker_logs)

    ref = stored(tmp_path / "ref")
    assert len(ref) == 12
    for run in ("mp", "worker"):
        got = stored(tmp_path / run)
        assert sorted(got) == sorted(ref), run
        for key, (_, arrays) in ref.items():
            assert set(got[key][1]) == set(arrays)
            for name, want in arrays.items():
                if name.startswith("blocks."):
                    np.testing.assert_allclose(got[key][1][name], want, rtol=1e-5, atol=1e-5 * np.abs(want).max(),
                                               err_msg=f"{run} {key} {name}")
                else:
                    np.testing.assert_array_equal(got[key][1][name], want, err_msg=f"{run} {key} {name}")
        # Both processes wrote shards of their own rows into the one store; nothing went through one host.
        shards = [p.name for p in (tmp_path / run / "shards").iterdir()]
        assert any("-p0-" in n for n in shards) and any("-p1-" in n for n in shards), shards
        assert main(["verify", str(tmp_path / run)]) == 0
        assert "OK" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "worker" / "done").iterdir()) == [
        "tasks-000000-000002", "tasks-000002-000004", "tasks-000004-000006"]
