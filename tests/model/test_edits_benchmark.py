"""The edit-cost benchmark runs end to end on CPU (`--tiny`) and prints its table; the numbers
themselves are measurements, never checked."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "edit_cost.py"
ROWS = ["forward (no edit)", "+ identity", "+ zero", "+ steer (test-input cells)", "+ splice(sae)",
        "+ ablate(sae, 10 latents)", "SAE alone (encode + decode)", "SAE matmuls alone (dense)"]


def test_edit_cost_benchmark_prints_its_table(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("sae_lens")
    spec = importlib.util.spec_from_file_location("edit_cost", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    assert bench.main(["--tiny", "--torch", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("edit cost at blocks.1.hook_resid_post")
    assert lines[1].split() == ["side", "variant", "ms", "/", "batch", "tokens/s", "overhead", "ms", "overhead", "/",
                                "SAE", "alone"]
    body = lines[2:]
    names = ROWS + ["transformers (no hook)", "transformers + SAELens splice hook"]
    assert len(body) == len(names)
    for line, name in zip(body, names, strict=True):
        assert name in line
    rows = json.loads(out.read_text())["rows"]
    assert [r["variant"] for r in rows] == names
    for r in rows:
        assert r["ms"] > 0 and r["tokens_per_s"] > 0
        edited = r["variant"].startswith("+") or r["variant"] == names[-1]
        assert (r["overhead_ms"] is not None) == edited
        assert (r["overhead_vs_sae"] is not None) == r["variant"].startswith("+")
