"""The generation benchmark runs end to end on CPU (`--tiny`) and prints its table; its numbers
are measured, never asserted (docs/BENCHMARKS.md)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "generate_throughput.py"


def test_benchmark_tiny_on_cpu_prints_its_table(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("generate_throughput", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    assert bench.main(["--tiny", "--device", "cpu", "--loop", "while", "python", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    for side in ("jax_while", "jax_python", "transformers"):
        assert r[side]["new_tokens"] == r["batch_size"] * r["max_new_tokens"]
    # float32, tiny model: both drivers and transformers pick the same greedy tokens
    assert r["loops_agree"] is True
    assert r["agreement"]["rows_identical"] == r["batch_size"]
    lines = capsys.readouterr().out.splitlines()
    title = next(i for i, ln in enumerate(lines) if ln.startswith("generate throughput (cpu, float32, batch "))
    header, *rows = lines[title + 1 : title + 5]
    assert header.split() == ["run", "new", "tokens/s", "wall", "s", "prefill", "s", "decode", "s", "vs", "transformers"]
    assert [row[:30].strip() for row in rows] == ["arclens generate (while_loop)", "arclens Python loop",
                                                  "transformers generate"]
    for row, cells in zip(rows, bench.table_rows(r), strict=True):
        assert row.split("  ")[0].strip() == cells[0] and cells[-1].endswith("x")
    assert rows[-1].rstrip().endswith("1.00x")  # transformers against itself
