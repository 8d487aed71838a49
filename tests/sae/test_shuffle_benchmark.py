"""benchmarks/shuffle_memory.py runs on forced CPU devices and prints its table; its numbers are
measured, never asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.support.cli import REPO


def test_shuffle_memory_benchmark_prints_a_row_a_data_width(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "shuffle_memory.py"), "--devices", "2", "--widths", "1,2",
           "--window", "2", "--tokens-per-batch", "256", "--length", "32", "--d-model", "16",
           "--batch-tokens", "64", "--json", str(out)]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["data_width"] for r in rows] == [1, 2]
    assert all(r["bytes_per_device"] > 0 and r["whole_window"] == r["one_share"] * r["data_width"] for r in rows)
    assert rows[0]["one_share"] == 2 * 256 * 16 * 2  # a window of 2 batches of 256 bf16 tokens of width 16
    header = next(line for line in proc.stdout.splitlines() if line.lstrip().startswith("data width"))
    assert header.split() == ["data", "width", "MiB", "a", "device", "one", "share", "whole", "window"]
