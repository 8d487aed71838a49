"""The real Qwen2 forward (tiny random checkpoint) on (1,2) and (2,1) meshes of 2 CPU devices:
captures equal the unsharded ones at every real token, and each row comes back exactly once.
(Two processes on a (2,2) mesh: test_extract_multiprocess.py, through the whole extract job.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

CHILD = Path(__file__).with_name("model_child.py")
TIMEOUT_S = 180


def _run(model_dir, jobs: list[tuple[str, int, Path, tuple[str, ...]]]) -> None:
    procs = [
        subprocess.Popen([sys.executable, str(CHILD), str(model_dir), mesh, str(n), str(out), *dist],
                         env=dict(os.environ, JAX_PLATFORMS="cpu"), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
        for mesh, n, out, dist in jobs
    ]
    try:
        for p in procs:
            log, _ = p.communicate(timeout=TIMEOUT_S)
            assert p.returncode == 0, log
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _captures(files: list[Path]) -> tuple[dict[str, dict[int, np.ndarray]], np.ndarray]:
    """{hook: {row: [T, D]}} over every process's file; a row returned twice fails."""
    out: dict[str, dict[int, np.ndarray]] = {}
    lengths = None
    for f in files:
        z = np.load(f)
        lengths = z["lengths"]
        for name in z.files:
            if name == "lengths":
                continue
            hook, start, _ = name.split("|")
            for j, row in enumerate(z[name]):
                rows = out.setdefault(hook, {})
                assert int(start) + j not in rows, f"{hook} row {int(start) + j} returned twice"
                rows[int(start) + j] = row
    return out, lengths


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.npz"
    _run(tiny_model_dir, [("none", 1, out, ())])
    return _captures([out])


def _assert_equal_to_reference(captures, reference):
    ref, lengths = reference
    assert set(captures) == set(ref)
    for hook, rows in captures.items():
        assert sorted(rows) == sorted(ref[hook])
        for i, row in rows.items():
            n = int(lengths[i])  # padded positions carry no meaning
            np.testing.assert_allclose(row[:n], ref[hook][i][:n], rtol=1e-5, atol=1e-5 * np.abs(ref[hook][i][:n]).max(),
                                       err_msg=f"{hook} row {i}")


def test_one_process_model_parallel_and_data_parallel(tiny_model_dir, tmp_path, reference):
    outs = {mesh: tmp_path / f"{mesh.replace(',', 'x')}.npz" for mesh in ("1,2", "2,1")}
    _run(tiny_model_dir, [(mesh, 2, out, ()) for mesh, out in outs.items()])
    for out in outs.values():
        _assert_equal_to_reference(_captures([out])[0], reference)
