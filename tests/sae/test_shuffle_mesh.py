"""The on-the-fly shuffle over a data-parallel mesh: each device packs its own rows, deals its
tokens out over the ``data`` axis and permutes its share (sae/shuffle.py). Run in subprocesses
(`shuffle_child.py`): one process of 4 CPU devices for the meshes 1x1, 2x1, 4x1 and 2x2, and two
processes of one device each for 2x1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tests.support.cli import free_port

CHILD = Path(__file__).with_name("shuffle_child.py")
MESHES = ("1,1", "2,1", "4,1", "2,2")
BATCH = 16  # the child's batch_tokens
TIMEOUT_S = 240


def _children(out: Path, n_devices: int, meshes: str, processes: int = 1) -> dict:
    coordinator = f"127.0.0.1:{free_port()}"
    dist = [[]] if processes == 1 else [[coordinator, str(processes), str(i)] for i in range(processes)]
    procs = [subprocess.Popen([sys.executable, str(CHILD), str(n_devices), meshes, str(out), *d],
                              env=dict(os.environ, JAX_PLATFORMS="cpu"), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for d in dist]
    try:
        logs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    return _children(tmp_path_factory.mktemp("shuffle") / "one.json", 4, ";".join(MESHES))


@pytest.mark.parametrize("mesh", MESHES)
def test_every_token_once_a_pass_in_batches_that_mix_prompts(one_process, mesh):
    r = one_process[mesh]
    data = int(mesh.split(",")[0])
    tokens = set(r["tokens"])
    epochs = np.array(r["epochs"])
    first = [t for ids, e in zip(r["ids"], epochs) if e == 0 for t in ids]
    assert len(set(first)) == len(first) and set(first) <= tokens
    # What pass 0 did not train on is exactly what it carried into pass 1, each device's part
    # smaller than its share of a batch plus the deal's imbalance.
    carried = r["carry_counts"][int(np.argmax(epochs == 1))]
    assert len(carried) == data and len(tokens) - len(first) == sum(carried)
    assert all(len(c) == data and max(c) < BATCH // data + data for c in r["carry_counts"] if c)
    # Passes 0 and 1 train on every token twice, but for what pass 1 carries into pass 2.
    two = np.unique([t for ids, e in zip(r["ids"], epochs) if e <= 1 for t in ids], return_counts=True)[1]
    assert two.max() <= 2 and two.sum() == 2 * len(tokens) - sum(r["carry_counts"][int(np.argmax(epochs == 2))])
    assert r["negated"]  # one permutation for both hooks
    assert r["shardings"] == ["P('data', None)"]
    assert np.mean([len({t // 1000 for t in ids}) for ids in r["ids"]]) > 8  # a forward batch has 4 prompts


@pytest.mark.parametrize("mesh", MESHES)
def test_a_resume_from_a_checkpointed_position_continues_the_stream(one_process, mesh):
    assert one_process[mesh]["resumed"] == [True] * 5


def test_the_model_axis_does_not_change_the_stream(one_process):
    assert one_process["2,2"]["ids"] == one_process["2,1"]["ids"]


def test_each_device_holds_its_share_of_the_window(one_process):
    """The packed, dealt and permuted buffers are split over the data axis: 1/D of the one-device
    bytes on each device (the replicated buffer this replaced held all of them on every device)."""
    held = {m: one_process[m]["bytes_per_device"] for m in ("1,1", "2,1", "4,1")}
    assert held["2,1"] < 0.6 * held["1,1"] and held["4,1"] < 0.35 * held["1,1"], held


def test_two_processes_deal_the_stream_of_one_process(one_process, tmp_path):
    two = _children(tmp_path / "two.json", 1, "2,1", processes=2)["2,1"]
    for key in ("ids", "carry_counts", "resumed"):
        assert two[key] == one_process["2,1"][key], key
