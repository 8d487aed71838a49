"""Show point "A planted case": a store of real prompts whose activations carry one direction only
on original-colour-3 cells of train-output grids and another on every cell of (shown) row 0, an
SAE trained on it by `arclens train-sae` (ReLU: a TopK SAE must give every token k latents, and
its planted latents then also fire weakly elsewhere; docs/FEATURES.md has its numbers), and
`arclens features` reporting exactly that: the two latents' role and colour shares, and coverage
of the two properties >= 0.9."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tests.support import planted_roles as pr

from arclens.cli import main


@pytest.fixture(scope="module")
def planted(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("planted")
    tasks_path = pr.write_tasks(root / "tasks.json", 12, seed=3)
    # inference prompts (no answer grid): the train outputs are the only output grids
    tasks, tokenizer, config, samples = pr.render(tasks_path, tiny_model_dir, predictions_per_task=8, with_answer=False)
    by_id = {t.task_id: t for t in tasks}
    truths = {s.key: pr.truth(s, by_id[s.task_id], tokenizer) for s in samples}
    make, directions = pr.planted_activations(64, seed=0)
    pr.write_store(root / "store", samples, lambda s: make(s, truths[s.key]),
                   pr.store_metadata(tiny_model_dir, tasks_path, tasks, config, 64))
    assert main(["train-sae", "--store", str(root / "store"), "--out", str(root / "sae"), "--hooks", pr.HOOK,
                 "--arch", "relu", "--d-sae", "16", "--tokens", "300000", "--batch-tokens", "1024",
                 "--seed", "0", "--quiet"]) == 0
    sae_dir = root / "sae" / pr.HOOK
    assert main(["features", "--sae", str(sae_dir), "--store", str(root / "store"), "--out", str(root / "fdir")]) == 0
    from arclens.sae import load

    return json.loads((root / "fdir" / "features.json").read_text()), load(str(sae_dir)), directions


def _latent_of(doc, sae, directions, i: int) -> int:
    """The latent whose decoder row is planted direction i (cosine > 0.9, and only one)."""
    w = np.asarray(sae.W_dec, np.float64)
    cos = w @ directions[i] / np.linalg.norm(w, axis=1)
    assert (cos > 0.9).sum() == 1, f"direction {i}: cosines {np.round(cos, 2)}"
    return int(np.argmax(cos))


def test_colour_3_in_output_grids(planted):
    doc, sae, directions = planted
    f = _latent_of(doc, sae, directions, 0)
    row = doc["latents"][f]
    assert row["cell_share"] >= 0.99
    assert row["grid_kind_share"]["train_output"] >= 0.99  # output grids only
    assert row["colour_share"][3] >= 0.99  # colour 3 in the task's own colours ...
    assert max(row["shown_colour_share"]) < 0.5  # ... which the colour maps scatter over the shown ones
    best = doc["coverage"]["properties"]["colour=3&grid=train_output"]
    assert best["latent"] == f and best["f1"] >= 0.9
    assert row["best_property"]["name"] == "colour=3&grid=train_output"
    # colour 3 is common in the input grids too, where this latent stays silent
    assert doc["coverage"]["properties"]["colour=3"]["f1"] < 0.8


def test_every_cell_of_row_0(planted):
    doc, sae, directions = planted
    f = _latent_of(doc, sae, directions, 1)
    row = doc["latents"][f]
    assert row["cell_share"] >= 0.99
    assert row["row_share"][0] >= 0.99
    kinds = row["grid_kind_share"]
    assert min(kinds["train_input"], kinds["train_output"], kinds["test_input"]) > 0.1  # every grid
    assert row["colour_specificity"] < 0.5  # whatever the colour
    best = doc["coverage"]["properties"]["row=0"]
    assert best["latent"] == f and best["f1"] >= 0.9
    assert row["best_property"]["name"] == "row=0"
