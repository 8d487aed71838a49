"""`arclens inspect`, `verify` and `export-pickle` through the real command line."""

from __future__ import annotations

import glob
import gzip
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from tests.support.synth_store import HOOKS, expected, keys, write

from arclens.cli import main


@pytest.fixture
def store(tmp_path):
    dest = str(tmp_path / "store")
    write(dest, keys(4), shard_bytes=3000)
    return dest


def test_verify_ok(store, capsys):
    assert main(["verify", store]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK ") and "8 samples" in out


def test_verify_detects_corrupted_shard(store, capsys):
    shard = sorted(glob.glob(os.path.join(store, "shards", "*.safetensors")))[1]
    data = bytearray(Path(shard).read_bytes())
    data[-3] ^= 0xFF  # flip bits inside the last tensor: same size, other checksum
    Path(shard).write_bytes(bytes(data))
    assert main(["verify", store]) == 1
    out = capsys.readouterr().out
    assert "PROBLEM" in out and "sha256" in out and os.path.basename(shard) in out
    assert "FAILED" in out.splitlines()[-1]


def test_verify_detects_index_disagreement_and_missing_shard(store, capsys):
    index_files = sorted(glob.glob(os.path.join(store, "index", "*.json")))
    doc = json.loads(Path(index_files[0]).read_text())
    doc["n_tokens"] += 1
    doc["samples"] = doc["samples"][::-1] + ["ghost/0/0"]
    Path(index_files[0]).write_text(json.dumps(doc))
    os.unlink(os.path.join(store, json.loads(Path(index_files[1]).read_text())["shard"]))
    assert main(["verify", store]) == 1
    out = capsys.readouterr().out
    assert "sample keys differ" in out and "index n_tokens" in out and "missing" in out


def test_verify_reports_duplicates_and_leftovers(store, capsys):
    write(store, keys(1), writer="x")
    Path(store, "shards", "w9-000000.safetensors").write_bytes(b"crash leftover")
    assert main(["verify", store]) == 0  # readers see every key once: reported, not a problem
    out = capsys.readouterr().out
    assert "committed twice" in out and keys(1)[0] in out
    assert "OK" in out and "2 duplicate keys (readers use the first copy" in out
    assert "uncommitted" in out and "w9-000000" in out


def test_verify_and_inspect_refuse_a_non_store(tmp_path, capsys):
    assert main(["verify", str(tmp_path)]) == 2
    assert "not an activation store" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "nothing")]) == 2


def test_inspect_prints_metadata_counts_and_stats(store, capsys):
    assert main(["inspect", store]) == 0
    out = capsys.readouterr().out
    for h in HOOKS:
        assert f"norm histogram: {h}" in out
    assert "random-tiny" in out and "bfloat16 / 16" in out and "8" in out
    from arclens import open_store

    n = open_store(store).n_tokens
    assert f"{n} per hook" in out
    # mean norm printed for the first hook matches one computed by hand
    x = np.concatenate([a[HOOKS[0]].astype(np.float32) for _, a in open_store(store).samples()])
    line = next(line for line in out.splitlines() if line.startswith("│ " + HOOKS[0]))
    assert f"{np.linalg.norm(x, axis=1).mean():.4g}" in line


def test_export_pickle_round_trip(store, tmp_path, capsys):
    out_dir = str(tmp_path / "legacy")
    assert main(["export-pickle", store, out_dir]) == 0
    assert "arbitrary code" in capsys.readouterr().err
    meta = json.loads(Path(out_dir, "metadata.json").read_text())
    assert meta["export"]["format"] == "arclens-pickle-export" and meta["hooks"] == HOOKS
    got = {}
    for path in sorted(glob.glob(os.path.join(out_dir, "shard_*.pkl.gz"))):
        with gzip.open(path, "rb") as f:
            for rec in pickle.load(f):  # our own freshly written file: trusted
                got[rec["key"]] = rec
    assert sorted(got) == sorted(keys(4))
    for key, rec in got.items():
        for h in HOOKS:
            assert rec["activations"][h].dtype == np.float32
            np.testing.assert_array_equal(rec["activations"][h], expected(key, h).astype(np.float32))
        np.testing.assert_array_equal(rec["token_id"], expected(key, "token_id"))
        assert rec["stored_tokens"] == len(rec["position"])
    assert main(["export-pickle", store, out_dir]) == 2, "never mixes two exports"


def test_readers_never_unpickle(monkeypatch, store):
    import pickle as pickle_module

    def refuse(*a, **k):
        raise AssertionError("a reader unpickled something")

    monkeypatch.setattr(pickle_module, "load", refuse)
    monkeypatch.setattr(pickle_module, "loads", refuse)
    monkeypatch.setattr(np, "load", refuse)
    from arclens import open_store

    s = open_store(store)
    list(s.samples())
    list(s.batches(HOOKS[0]))
    assert main(["verify", store]) == 0
