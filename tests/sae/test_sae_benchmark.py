"""The SAE benchmark runs and prints its table (a smoke run; no speed is asserted)."""

from __future__ import annotations

import importlib.util
import json

import pytest
from tests.support.cli import REPO

pytest.importorskip("sae_lens")


def test_smoke_run_prints_the_side_by_side_table(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("sae_throughput", REPO / "benchmarks" / "sae_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--smoke", "--json", str(tmp_path / "out.json")]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("trainer |"))
    assert lines[header].split(" | ") == ["trainer", "lr", "tokens/s", "FVU", "L0", "dead", "recovered",
                                          "vs best SAELens"]
    rows = [line.split(" | ") for line in lines[header + 2:] if " | " in line]
    assert [r[0] for r in rows] == ["arclens", "SAELens", "SAELens"]  # our default, then the lr sweep
    assert rows[0][1].endswith("(default)") and "x tokens/s" in rows[0][7]
    assert sum("best by FVU" in r[7] for r in rows) == 1
    assert any(line.startswith("interleaved steps") for line in lines)
    doc = json.loads((tmp_path / "out.json").read_text())
    assert set(doc["versions"]) >= {"jax", "torch", "sae_lens"}
    stored = doc["stores"]["smoke"]
    assert len(stored["rows"]) == 3 and {"fvu", "l0", "dead", "recovered", "tokens_per_s"} <= set(stored["rows"][0])
    assert set(stored["interleaved_tokens_per_s"]) == {"arclens", "saelens"}
