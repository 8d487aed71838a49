"""`arclens train-sae` as 2 processes x 2 CPU devices with jax.distributed on a (2, 2) mesh
(batch rows over ``data`` across the processes, latents over ``model`` inside each) trains the
same SAEs as a 1-process run on 1 device: the same data order, equal weights up to float
summation order."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file
from tests.support.cli import free_port, start_cli, wait_ok
from tests.support.planted import _planted_small, _planted_transcoder  # noqa: F401 - fixtures

HOOK_IN, HOOK_OUT = "blocks.0.hook_resid_mid", "blocks.0.hook_mlp_out"


@pytest.mark.slow
def test_two_processes_on_a_2x2_mesh_equal_one_process(planted_transcoder, tmp_path):
    store = planted_transcoder[0]
    # Four SAEs share the stream: two hooks x two widths, one jitted step.
    common = ["train-sae", "--store", store, "--hooks", HOOK_IN, HOOK_OUT, "--d-sae", "32", "48", "--k", "4",
              "--tokens", str(10 * 512), "--batch-tokens", "512", "--checkpoint-every", "4", "--quiet"]
    coordinator = f"127.0.0.1:{free_port()}"
    logs = [tmp_path / f"p{i}.log" for i in range(2)]
    procs = [start_cli([*common, "--out", tmp_path / "mp", "--mesh", "2,2", "--coordinator", coordinator,
                        "--num-processes", "2", "--process-id", str(i)], logs[i], JAX_NUM_CPU_DEVICES=2)
             for i in range(2)]
    ref_log = tmp_path / "ref.log"
    ref = start_cli([*common, "--out", tmp_path / "ref"], ref_log)
    wait_ok([*procs, ref], [*logs, ref_log])

    for i, log in enumerate(logs):
        assert f"jax.distributed: process {i} of 2" in log.read_text()
    names = sorted(p.name for p in (tmp_path / "ref").iterdir())
    assert names == sorted(f"{h}-d{w}" for h in (HOOK_IN, HOOK_OUT) for w in (32, 48))
    assert sorted(p.name for p in (tmp_path / "mp").iterdir()) == names  # no checkpoints left, nothing else
    for name in names:
        want = load_file(f"{tmp_path}/ref/{name}/sae_weights.safetensors")
        got = load_file(f"{tmp_path}/mp/{name}/sae_weights.safetensors")
        for key in want:
            scale = float(np.abs(want[key]).max())
            np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-4 * scale, err_msg=f"{name} {key}")
        a = json.loads((tmp_path / "ref" / name / "arclens.json").read_text())["final"]
        b = json.loads((tmp_path / "mp" / name / "arclens.json").read_text())["final"]
        assert abs(a["fvu"] - b["fvu"]) < 1e-4 and a["l0"] == pytest.approx(b["l0"], abs=1e-3)
