"""benchmarks/reader_throughput.py runs end to end on a tiny store and checks its own token
counts (every row must read every token once, or the script exits non-zero). Its numbers are
measured, never asserted (docs/BENCHMARKS.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.support.cli import REPO


def test_reader_benchmark_runs_and_reports_every_row(tmp_path):
    out = tmp_path / "reader.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "reader_throughput.py"), "--dest", str(tmp_path / "s"),
           "--gb", "0.02", "--shard-mb", "2", "--tokens-per-sample", "100", "--batch-size", "256",
           "--buffer-shards", "2", "--repeats", "1", "--step-ms", "0.1", "--json", str(out)]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["n_tokens"] > 0
    runs = [r["run"] for r in res["results"]]
    assert runs == ["numpy memmap, stored order", "Store.batches, stored order", "numpy memmap, shuffled",
                    "Store.batches, shuffled", "numpy memmap, shuffled + step", "Store.batches, shuffled + step"]
    assert all(r["tokens_per_s"] > 0 and r["vs_numpy"] > 0 for r in res["results"])
    # The table it prints: the columns, then one line per run in that order, each with its numbers.
    lines = proc.stdout.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.split() == ["run", "tokens/s", "GB/s", "vs", "numpy"])
    for line, r in zip(lines[start + 1 : start + 1 + len(runs)], res["results"], strict=True):
        assert line.startswith(r["run"]) and f"{r['tokens_per_s']:,.0f}" in line and line.rstrip().endswith("x")
