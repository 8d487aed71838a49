"""`arclens features --png LATENT ...`: a latent's top examples as ARC grids in a PNG (matplotlib Agg).

The PNG is read back: its size is the one the layout computed, every cell's pixels carry the
cell's ARC colour, and the cells and colours are the sample's as the store holds them (token
roles, the digit each cell token spells), not only as the FDIR says.
"""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest
from tests.support import planted_roles as pr

from arclens.cli import main
from arclens.features.dashboard.fdir import open_fdir
from arclens.features.figures import PALETTE_RGB, latent_figure


@pytest.fixture(scope="module")
def planted(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("figures")
    fdir = pr.build_fdir(root, tiny_model_dir, task_ids=["t-one", "$x^2$_<b>"], d_sae=8, top_k=4,
                         quantile_examples=1, quantiles=4, context=4, logits=3)
    return root, fdir


def _png(path) -> np.ndarray:
    img = mpimg.imread(str(path))
    return np.round(img[..., :3] * 255).astype(np.uint8)


def _store_cells(store, tokenizer, key) -> dict:
    from tests.support.stores import stored

    _, a = stored(store)[key]
    return {(int(g), int(r), int(c)): int(tokenizer.convert_ids_to_tokens(int(t)))
            for t, g, r, c in zip(a["token_id"], a["grid"], a["row"], a["col"]) if g >= 0}


def test_png_cells_have_the_samples_arc_colours(planted, tmp_path, tokenizer):
    root, fdir = planted
    fd = open_fdir(fdir)
    latent = max(range(fd.d_sae), key=lambda i: fd.index["latents"][i]["n_fires"])
    boxes = latent_figure(fd, latent, tmp_path / "f.png", n_examples=3)
    img = _png(tmp_path / "f.png")
    assert img.shape[0] >= max(b.top + b.height * b.cell_px for b in boxes)
    assert img.shape[1] >= max(b.left + b.width * b.cell_px for b in boxes)
    examples = [e for lat, exs in fd.examples_by_latent() if lat == latent for e in exs if e["kind"] == "top"][:3]
    assert sorted({b.rank for b in boxes}) == [e["rank"] for e in examples]
    for e in examples:
        truth = _store_cells(root / "store", tokenizer, e["key"])
        mine = [b for b in boxes if b.rank == e["rank"]]
        drawn = {(b.grid, r, c): b.cells[r][c] for b in mine for r in range(b.height) for c in range(b.width)}
        assert drawn == truth  # every cell of every grid of the sample, with its shown colour
        for b in mine:
            assert b.cell_px >= 8
            for r in range(b.height):
                for c in range(b.width):
                    y, x = b.top + r * b.cell_px, b.left + c * b.cell_px
                    # a pixel inside the cell, clear of the activation square and the focus frame
                    inside = img[y + 1: y + b.cell_px - 1, x + 1: x + b.cell_px - 1].reshape(-1, 3)
                    want = PALETTE_RGB[b.cells[r][c]]
                    share = np.mean(np.all(inside == want, axis=1))
                    assert share > 0.4, (b.grid, r, c, share)


def test_features_png_flag_writes_the_figures(planted, tmp_path, capsys):
    root, fdir = planted
    fd = open_fdir(fdir)
    firing = [i for i, r in enumerate(fd.index["latents"]) if r["n_fires"]][:2]
    out = tmp_path / "fdir"
    assert main(["features", "--sae", str(root / "sae"), "--store", str(root / "store"), "--out", str(out),
                 "--top-k", "4", "--png", *map(str, firing)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(out / "figures" / f"latent-{i}.png") for i in firing]
    for path in printed:
        img = _png(path)
        assert img.shape[0] > 50 and img.shape[1] > 100
        colours = {tuple(p) for p in img.reshape(-1, 3)[::7]}
        assert len(colours & {tuple(c) for c in PALETTE_RGB}) >= 3  # ARC colours, not a blank canvas


def test_png_of_a_latent_that_does_not_exist_is_one_line(planted, tmp_path, capsys):
    _, fdir = planted
    from arclens.errors import UserError
    from arclens.features.figures import write_figures

    with pytest.raises(UserError, match="no such latent"):
        write_figures(fdir, [0, 99], tmp_path / "figs")
    assert not (tmp_path / "figs").exists()
    assert main(["features", "--sae", "x", "--store", "y", "--out", str(tmp_path / "o"), "--png", "-1"]) == 2
    assert "--png" in capsys.readouterr().err
