"""benchmarks/model_equivalence_gpu.py works end to end (on CPU, tiny shapes): the lead runs it on
a GPU, where nobody can debug it first."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "model_equivalence_gpu.py"


def test_tiny_cpu_run_writes_the_table(tmp_path):
    spec = importlib.util.spec_from_file_location("model_equivalence_gpu", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rc = mod.main(["--tiny", "--cpu", "--timing-iters", "1", "--lengths", "48", "31",
                   "--out", str(tmp_path / "out"), "--model-dir", str(tmp_path / "model")])
    assert rc == 0
    r = json.loads((tmp_path / "out" / "model_equivalence.json").read_text())
    md = (tmp_path / "out" / "model_equivalence.md").read_text()
    names = [f"blocks.{i}.hook_{k}" for i in (0, 1, 2) for k in mod.KINDS] + ["logits"]
    errs = r["errors"]
    assert set(errs["ours fp32 vs HF fp32"]) == set(names)
    assert r["fp32_pass"] and max(errs["ours fp32 vs HF fp32"].values()) <= 1e-4
    # bf16 is bf16-sized off, and about as far from fp32 as transformers' own bf16 is
    for n in names[1:]:
        ours, base = errs["ours bf16 xla vs HF fp32"][n], errs["HF bf16 vs HF fp32 (baseline)"][n]
        assert 1e-4 < ours < 3e-2 and ours < 2 * base + 1e-3, n
    # no cuDNN on CPU: reported, not fatal
    assert str(errs["ours bf16 cudnn vs HF bf16"]["logits"]).startswith("unavailable")
    assert "unavailable" in md and "**PASS**" in md
    assert r["auto_attn_impl_bf16"] == "xla"
