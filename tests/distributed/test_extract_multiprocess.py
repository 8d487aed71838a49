"""`arclens extract` as 2 processes x 2 CPU devices with jax.distributed on a (2,2) mesh stores the
same samples with the same activations as a 1-process run, each process writing its own shards."""

from __future__ import annotations

import numpy as np
from cli_helpers import free_port, start_cli, stored, wait_ok, write_small_tasks

from arclens.cli import main

OPTIONS = ["--layers", "1", "3", "--activation", "residual", "mlp", "--predictions-per-task", "2",
           "--dtype", "float32", "--tokens-per-batch", "1024", "--shard-mb", "0.5"]


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

    ref, mp = stored(tmp_path / "ref"), stored(tmp_path / "mp")
    assert len(ref) == 12 and sorted(mp) == sorted(ref)
    for key, arrays in ref.items():
        assert set(mp[key]) == set(arrays)
        for name, want in arrays.items():
            if name.startswith("blocks."):
                scale = np.abs(want).max()
                np.testing.assert_allclose(mp[key][name], want, rtol=1e-5, atol=1e-5 * scale, err_msg=f"{key} {name}")
            else:
                np.testing.assert_array_equal(mp[key][name], want, err_msg=f"{key} {name}")
    # Both processes wrote shards of their own rows into the one store; nothing went through one host.
    writers = {p.name.rsplit("-", 1)[0] for p in (tmp_path / "mp" / "shards").iterdir()}
    assert {w[-3:] for w in writers} == {"-p0", "-p1"}
    assert main(["verify", str(tmp_path / "mp")]) == 0
    assert "OK" in capsys.readouterr().out
