"""`arclens features` on a store that `arclens extract` wrote (the tiny random model): its metadata
names the model and the tasks, so token strings, logits and the cells' colours all come without
flags, and the tasks' fingerprint is checked."""

from __future__ import annotations

import json

from tests.support.cli import extract_args
from tests.support.features_brute import quantised_sae
from tests.support.planted_roles import HOOK, write_tasks

from arclens.cli import main


def test_features_on_an_extract_store(tmp_path, tiny_model_dir, capsys):
    from arclens.sae import save

    tasks = write_tasks(tmp_path / "tasks.json", 2, seed=4)
    store = tmp_path / "store"
    assert main(extract_args(tiny_model_dir, tasks, store, "--hooks", HOOK, "--dtype", "float32",
                             "--predictions-per-task", "4")) == 0
    sae = quantised_sae("topk")
    save(sae.replace(b_enc=sae.b_enc * 0, b_dec=sae.b_dec * 0), str(tmp_path / "sae"))  # fires on any input
    assert main(["features", "--sae", str(tmp_path / "sae"), "--store", str(store), "--out", str(tmp_path / "fdir"),
                 "--top-k", "4"]) == 0
    doc = json.loads((tmp_path / "fdir" / "features.json").read_text())
    assert doc["source"]["model_known"] and doc["source"]["random_weights"] is True
    assert doc["n_tokens"] > 500 and doc["base_rates"]["cells"] > 100
    assert all(r["top_logits"] and len(r["top_logits"]) == 10 for r in doc["latents"])
    line = json.loads((tmp_path / "fdir" / "examples.jsonl").read_text().splitlines()[0])
    assert all(isinstance(t, str) for t in line["context"]["tokens"])
    assert any(r["consistency"] is not None for r in doc["latents"])
    capsys.readouterr()
    # the store's tasks, edited: refused by their fingerprint
    edited = json.loads(tasks.read_text())
    first = next(iter(edited))
    edited[first]["train"][0]["input"][0][0] = (edited[first]["train"][0]["input"][0][0] + 1) % 10
    tasks.write_text(json.dumps(edited))
    assert main(["features", "--sae", str(tmp_path / "sae"), "--store", str(store), "--out",
                 str(tmp_path / "fdir2")]) == 2
    assert "not the tasks this store was made from" in capsys.readouterr().err
