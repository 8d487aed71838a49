"""benchmarks/extract_throughput.py runs end to end on CPU with the tiny preset and tiny sizes.

That it runs, reports what it claims to measure and prints its table (columns, a row per run)
is checked; its numbers are measured, never asserted (docs/BENCHMARKS.md). The torch.compile baseline is left out: inductor's C++ build
takes over a minute on a CPU; it is exercised by the documented CPU run and on the GPU."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.cli import REPO, cli_env
from tests.support.tasks import write_tasks


def test_benchmark_runs_on_cpu_and_writes_its_table(tmp_path, tiny_model_dir):
    tasks = write_tasks(tmp_path / "tasks.json", n_tasks=2)
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "extract_throughput.py"), "--device", "cpu",
           "--model", str(tiny_model_dir), "--batch", "2", "--seq", "128", "--steps", "2",
           "--tasks-json", str(tasks), "--predictions-per-task", "2", "--mix-samples", "4",
           "--tokens-per-batch", "1024", "--runs", "arclens", "pinned", "disk", "eager", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=cli_env(OUT=str(tmp_path)),
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["hooks"] == ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post", "blocks.3.hook_resid_post"]
    rows = {(r["mix"], r["run"]): r for r in res["rows"]}
    expected = {("fixed", "arclens->host"), ("fixed", "arclens-pinned->host"), ("fixed", "arclens->disk"),
                ("fixed", "hf-eager->host"), ("arc", "arclens->host"), ("arc", "arclens-pinned->host"),
                ("arc", "hf-eager->host")}
    assert set(rows) == expected
    for key, row in rows.items():
        assert "error" not in row, (key, row.get("error"))
        assert row["tokens_per_s"] > 0 and 0 < row["mfu"]
    # the fixed mix: 2 steps of 2 x 128 real tokens; arclens stores exactly the real tokens
    assert rows[("fixed", "arclens->host")]["tokens"] == 2 * 2 * 128
    assert rows[("fixed", "arclens->disk")]["shards"] >= 1
    assert rows[("fixed", "arclens-pinned->host")]["tokens"] == 2 * 2 * 128
    assert rows[("fixed", "arclens-pinned->host")]["memory_kind"] in ("pinned_host", "device")
    arc = rows[("arc", "arclens->host")]
    assert arc["tokens"] == arc["stored_tokens"] == res["arc_mix"]["real_tokens"]
    assert arc["tokens"] == rows[("arc", "hf-eager->host")]["tokens"]
    assert rows[("fixed", "arclens->host")]["vs_eager"] > 0
    # The table it prints: the title, the columns in order, and a line per (mix, run) with its cells.
    lines = proc.stdout.splitlines()
    assert any("extract throughput" in ln for ln in lines)
    columns = ["mix", "run", "tokens/s", "MFU", "compile s", "vs eager", "vs compile", "padding"]
    header = next(ln for ln in lines if all(c in ln for c in columns))
    assert [header.index(c) for c in columns] == sorted(header.index(c) for c in columns)
    for (mix, run), row in rows.items():
        line = next(ln for ln in lines if f" {run} " in ln and f" {mix} " in ln)
        cells = [c.strip() for c in line.replace("│", "|").split("|") if c.strip()]
        assert cells[:2] == [mix, run] and len(cells) == len(columns), cells
        assert cells[2] == f"{row['tokens_per_s']:,.0f}" and cells[3] == f"{row['mfu']:.1%}"
        if run.startswith("arclens") and mix == "fixed":
            assert cells[5] == f"{row['vs_eager']:.2f}"  # beside the peer measured in the same run
