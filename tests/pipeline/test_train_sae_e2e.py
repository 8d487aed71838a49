"""`arclens train-sae` end to end: what each SAE's folder holds (SPEC.md section 5), a k sweep and a
transcoder in their folders, and a store and an output on an object store (moto's S3)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from tests.support.planted import (  # noqa: F401 - fixtures
    HOOK,
    HOOK_IN,
    HOOK_OUT,
    _planted_small,
    _planted_transcoder,
    write_planted_store,
)

from arclens.cli import main

METRIC_KEYS = {"step", "tokens", "loss", "fvu", "l0", "dead", "dense", "aux_loss", "sparsity_loss", "lr",
               "tokens_per_s", "threshold", "overflow"}


def test_a_k_sweep_writes_each_sae_folder_whole(planted_small, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["train-sae", "--store", planted_small[0], "--out", str(out), "--hooks", HOOK, "--d-sae", "64",
            "--k", "3", "6", "--tokens", "8192", "--batch-tokens", "512", "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [f"{HOOK}-k3", f"{HOOK}-k6"]
    for k in (3, 6):
        folder = out / f"{HOOK}-k{k}"
        assert sorted(p.name for p in folder.iterdir()) == [
            "arclens.json", "cfg.json", "metrics.jsonl", "sae_weights.safetensors", "sparsity.safetensors",
            "training.png"]
        assert f"{HOOK}-k{k}: FVU" in printed
        cfg = json.loads((folder / "cfg.json").read_text())
        assert (cfg["architecture"], cfg["d_in"], cfg["d_sae"], cfg["k"], cfg["dtype"]) == ("topk", 32, 64, k, "float32")
        assert cfg["apply_b_dec_to_input"] is True and cfg["normalize_activations"] == "none"
        meta = cfg["metadata"]
        assert meta["hook_name"] == HOOK and meta["prepend_bos"] is False and meta["model_name"] == "planted-dictionary"
        assert meta["sae_lens_version"].startswith("6.")
        w = load_file(str(folder / "sae_weights.safetensors"))
        assert {n: v.shape for n, v in w.items()} == {"W_enc": (32, 64), "b_enc": (64,), "W_dec": (64, 32),
                                                       "b_dec": (32,)}
        sparsity = load_file(str(folder / "sparsity.safetensors"))["sparsity"]
        assert sparsity.shape == (64,) and sparsity.max() <= 0 and sparsity.min() >= -10
        # log10 frequencies of a TopK SAE: the mean frequency is k / d_sae
        assert np.sum(10 ** sparsity) == pytest.approx(k, rel=0.05)
        lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
        assert len(lines) == 16 and set(lines[0]) == METRIC_KEYS
        assert [x["step"] for x in lines] == list(range(1, 17)) and lines[-1]["tokens"] == 8192
        assert lines[-1]["fvu"] < lines[0]["fvu"] and all(x["l0"] <= k for x in lines)
        doc = json.loads((folder / "arclens.json").read_text())
        assert doc["complete"] is True and doc["tokens"] == 8192 and doc["steps"] == 16
        assert doc["source"]["kind"] == "store" and doc["source"]["n_tokens"] == 24_576
        assert doc["source"]["store"] == planted_small[0] and doc["source"]["hooks"] == [HOOK]
        assert set(doc["final"]) >= {"fvu", "l0", "dead", "dense"}
        assert doc["input_scale"]["folded_into_weights"] is True and doc["input_scale"]["in"] > 0
        assert [s["k"] for s in doc["settings"]["saes"]] == [3, 6] and doc["settings"]["lr"] is None
        assert doc["sae"]["k"] == k
        assert doc["sae"]["lr"] == pytest.approx(2.5e-3 / np.sqrt(64 / 2**14))
        png = (folder / "training.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_transcoder_folder(planted_transcoder, tmp_path):
    out = tmp_path / "out"
    argv = ["train-sae", "--store", planted_transcoder[0], "--out", str(out), "--hook-in", HOOK_IN, "--hook-out",
            HOOK_OUT, "--arch", "relu", "--d-sae", "64", "--tokens", "4096", "--batch-tokens", "512", "--quiet",
            "--dtype", "bfloat16"]
    assert main(argv) == 0
    folder = out / f"{HOOK_IN}--{HOOK_OUT}"
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["architecture"] == "transcoder" and cfg["d_out"] == 32 and cfg["apply_b_dec_to_input"] is False
    assert cfg["metadata"]["hook_name"] == HOOK_IN and cfg["metadata"]["hook_name_out"] == HOOK_OUT


def test_store_and_output_on_s3(s3_remote, tmp_path, monkeypatch, capsys):
    from tests.support.planted import make_dictionary

    for name, value in s3_remote.env.items():
        monkeypatch.setenv(name, value)
    store = s3_remote.url + "/store"
    write_planted_store(store, make_dictionary(32, 16, seed=5, per_token=2.0), 4096, shard_bytes=64 << 10,
                        storage_options=s3_remote.storage_options)
    out = s3_remote.url + "/sae"
    argv = ["train-sae", "--store", store, "--out", out, "--hooks", HOOK, "--d-sae", "32", "--k", "2", "--tokens",
            "4096", "--batch-tokens", "512", "--checkpoint-every", "3", "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
    import arclens.sae as asae
    from arclens.store import fs as fsx

    sae = asae.load(f"{out}/{HOOK}", storage_options=s3_remote.storage_options)
    assert sae.cfg.d_sae == 32 and sae.cfg.k == 2
    fs, root = fsx.get_fs(out, s3_remote.storage_options)
    names = sorted(n.rsplit("/", 1)[-1] for n in fs.find(root))
    assert "metrics.jsonl" in names and "training.png" in names
    assert not any(n.startswith("step-") or n == "latest.json" for n in names), "checkpoints are removed"
    bucket = s3_remote.url.split("/")[2]
    assert not (Path.cwd() / bucket).exists() and not (tmp_path / bucket).exists(), "wrote to a local folder"
