"""The throughput benchmark runs end to end on CPU (`--tiny`); its numbers are not checked."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "generate_throughput.py"


def test_benchmark_tiny_on_cpu(tmp_path):
    spec = importlib.util.spec_from_file_location("generate_throughput", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    assert bench.main(["--tiny", "--device", "cpu", "--loop", "while", "python", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    for side in ("jax_while", "jax_python", "transformers"):
        assert r[side]["new_tokens"] == r["batch_size"] * r["max_new_tokens"]
        assert r[side]["new_tokens_per_s"] > 0
    # float32, tiny model: both implementations pick the same greedy tokens
    assert r["agreement"]["rows_identical"] == r["batch_size"]
