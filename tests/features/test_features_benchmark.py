"""benchmarks/features_throughput.py runs end to end on a tiny store and prints its table; the
script itself checks that every row saw every token. Its numbers are measured, never asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from tests.support.cli import REPO


@pytest.mark.parametrize("tallies, workers", [("auto", 1), ("device", 2)])
def test_features_benchmark_runs_and_reports_every_row(tmp_path, tallies, workers):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "features_throughput.py"), "--dest", str(tmp_path / "b"),
           "--tasks", "1", "--d-model", "32", "--d-sae", "64", "--k", "4", "--batch-tokens", "2048",
           "--repeats", "1", "--tallies", tallies, "--fold-workers", str(workers), "--json", str(out)]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), JAX_PLATFORMS="cpu")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["n_tokens"] > 1000
    rows = ["Store.batches (plain read)", "Store.samples", "features source", "plain read + SAE codes",
            "+ device step", "host folding alone"] + ["  of which the parent's CPU"] * (workers > 1)
    assert [r["run"] for r in res["results"]] == [*rows, "features pass (no files)", "arclens features"]
    assert all(r["tokens_per_s"] > 0 and r["x_read"] > 0 for r in res["results"])
    header = next(line for line in proc.stdout.splitlines() if line.startswith("run"))
    assert header.split() == ["run", "(best", "of", "1)", "seconds", "tokens/s", "x", "read", "ns/token",
                              "median", "x", "read"]


def test_host_only_measures_the_reads_and_the_source_round_after_round(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "features_throughput.py"), "--dest", str(tmp_path / "b"),
           "--tasks", "1", "--d-model", "32", "--batch-tokens", "2048", "--repeats", "3", "--host-only",
           "--json", str(out)]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), JAX_PLATFORMS="cpu")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert [r["run"] for r in res["results"]] == ["Store.batches (plain read)", "Store.samples", "features source"]
    assert all(r["median_seconds"] >= r["seconds"] > 0 for r in res["results"])
