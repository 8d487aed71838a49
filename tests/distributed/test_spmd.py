"""Multi-process JAX on CPU with a small tensor-parallel block: every row comes back once, equal to
a 1-device run.

Each case runs tests/distributed/spmd_child.py in fresh processes, because the device count is
fixed when JAX starts and this pytest process has already started it with one device.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tests.support.cli import free_port

CHILD = Path(__file__).with_name("spmd_child.py")
TIMEOUT_S = 120


def _start(out: Path, mesh: str, n_devices: int, *dist: str) -> subprocess.Popen:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    if dist:
        coordinator, n, i = dist
        env.update(JAX_COORDINATOR_ADDRESS=coordinator, JAX_NUM_PROCESSES=n, JAX_PROCESS_ID=i)
    return subprocess.Popen(
        [sys.executable, str(CHILD), str(out), mesh, str(n_devices)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _wait_all(procs: list[subprocess.Popen]) -> list[str]:
    outputs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=TIMEOUT_S)
            assert p.returncode == 0, out
            outputs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return outputs


def _rows(out: Path) -> dict[int, np.ndarray]:
    """Every saved row of every process, keyed by global row index; a row saved twice fails."""
    rows: dict[int, np.ndarray] = {}
    for f in sorted(out.glob("rows-p*.npz")):
        z = np.load(f)
        for i, start in enumerate(z["starts"]):
            for j, row in enumerate(z[f"rows{i}"]):
                assert int(start) + j not in rows, f"row {int(start) + j} returned by two processes"
                rows[int(start) + j] = row
    return rows


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[int, np.ndarray]:
    out = tmp_path_factory.mktemp("ref")
    _wait_all([_start(out, "1,1", 1)])
    rows = _rows(out)
    assert sorted(rows) == list(range(8))
    return rows


def _assert_close(rows, reference):
    assert sorted(rows) == sorted(reference)
    scale = max(np.abs(r).max() for r in reference.values())
    for i, row in rows.items():
        np.testing.assert_allclose(row, reference[i], rtol=1e-5, atol=1e-5 * scale, err_msg=f"row {i}")


def test_model_axis_across_two_processes_returns_each_row_once(tmp_path, reference):
    # A (1,4) mesh over 2 processes x 2 devices: "model" spans the processes, both feed the whole
    # batch, and local_rows hands each row to exactly one of them (replica 0). The (2,2) case, where
    # "data" spans the processes, runs through the whole extract job in test_extract_multiprocess.py.
    coordinator = f"127.0.0.1:{free_port()}"
    logs = _wait_all([_start(tmp_path, "1,4", 2, coordinator, "2", str(i)) for i in range(2)])
    assert all("fed rows 0:8" in log for log in logs)
    _assert_close(_rows(tmp_path), reference)
    assert sum("owns []" in log for log in logs) == 1
