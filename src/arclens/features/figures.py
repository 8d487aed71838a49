"""PNG figures of a latent for papers: its top examples drawn as ARC grids (`arclens features --png`).

One row per top example: every grid of the sample, in the standard ARC palette, as the model saw
it (augmented), each labelled with its role; a white inner square on each cell where the latent
fires, larger for a larger activation (relative to the latent's maximum), and a magenta frame on
the example's own token when it is a cell. Drawn with matplotlib's Agg canvas directly (no pyplot,
no display, no global state). Geometry is computed in whole pixels, so every cell is a block of
``cell_px`` pixels whose centre has exactly its ARC colour; ``latent_figure`` returns where each
grid landed, which is how the tests read the PNG back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from arclens.errors import UserError
from arclens.features.dashboard.fdir import FeatureDir, open_fdir

PALETTE = ("#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00",
           "#AAAAAA", "#F012BE", "#FF851B", "#7FDBFF", "#870C25")
PALETTE_RGB = np.array([[int(h[i:i + 2], 16) for i in (1, 3, 5)] for h in PALETTE], np.uint8)
DPI = 100
MAX_WIDTH_PX = 3200
LABEL_CHAR_PX = 6.2  # width of one character of an 8 pt label at DPI 100
TITLE_CHAR_PX = 7.8  # and of a 10 pt title


@dataclass(frozen=True)
class GridBox:
    """Where one grid was drawn: pixel box (left, top) with ``cell_px`` pixels per cell."""
    rank: int
    grid: int
    left: int
    top: int
    height: int
    width: int
    cell_px: int
    cells: tuple[tuple[int, ...], ...]


def _label(g: dict, width_px: int) -> str:
    """The grid's role; shortened ("in 2", "out 2", "test in") where the grid is narrow."""
    label = str(g.get("label", ""))
    if len(label) * LABEL_CHAR_PX <= width_px:
        return label
    return {"train_input": f"in {(g.get('example') or 0) + 1}", "train_output": f"out {(g.get('example') or 0) + 1}",
            "test_input": "test in", "answer": "answer"}.get(g.get("kind"), label)


def _latent_examples(fd: FeatureDir, latent: int, n: int) -> list[dict]:
    for lat, examples in fd.examples_by_latent():
        if lat == latent:
            return [e for e in examples if e.get("kind") == "top"][:n]
    return []


def _samples(fd: FeatureDir, keys: set[str]) -> dict[str, dict]:
    out = {}
    for s in fd.samples():
        if s["key"] in keys:
            out[s["key"]] = s
    return out


def _rgb(cells) -> np.ndarray:
    a = np.asarray(cells, np.int64)
    if a.ndim != 2 or a.min() < 0 or a.max() > 9:
        raise UserError("samples.jsonl: a grid that is not a rectangle of colours 0..9")
    return PALETTE_RGB[a]


def latent_figure(fd: FeatureDir, latent: int, out: Path, n_examples: int = 4) -> list[GridBox]:
    """Draw ``latent``'s top ``n_examples`` into the PNG ``out``; returns the grids' pixel boxes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    if not 0 <= latent < fd.d_sae:
        raise UserError(f"--png {latent}: no such latent; this SAE has latents 0..{fd.d_sae - 1}")
    examples = _latent_examples(fd, latent, n_examples)
    if not examples:
        raise UserError(f"--png {latent}: latent {latent} never fires on the source; no example to draw")
    samples = _samples(fd, {e["key"] for e in examples})
    max_act = fd.index["latents"][latent].get("max_act") or max(e["activation"] for e in examples)

    gap, label_h, title_h, margin = 12, 16, 22, 10
    widest = max(sum(g["width"] for g in samples[e["key"]]["grids"]) + 2 * len(samples[e["key"]]["grids"])
                 for e in examples)
    cell_px = int(max(4, min(16, (MAX_WIDTH_PX - 2 * margin) // max(1, widest))))
    rows = []  # (example, [(grid, left, label)], row height, right edge)
    for e in examples:
        grids, left = [], margin
        for g in samples[e["key"]]["grids"]:
            label = _label(g, g["width"] * cell_px)
            grids.append((g, left, label))
            left += max(g["width"] * cell_px, int(len(label) * LABEL_CHAR_PX) + 4) + gap
        rows.append((e, grids, max(g["height"] for g in samples[e["key"]]["grids"]) * cell_px, left))
    titles = {e["rank"]: (f"latent {latent}  #{e['rank'] + 1}  activation {e['activation']:.3g}  "
                          f"task {samples[e['key']]['task_id']}  (sample {e['key']})") for e in examples}
    width = max(max(r[3] for r in rows) + margin, int(max(len(t) for t in titles.values()) * TITLE_CHAR_PX) + 2 * margin)
    height = sum(title_h + label_h + r[2] + gap for r in rows) + margin

    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    fig.patch.set_facecolor("white")
    boxes: list[GridBox] = []
    top = margin // 2
    for e, grids, row_h, _ in rows:
        fig.text(margin / width, 1 - (top + title_h - 6) / height, titles[e["rank"]], fontsize=10,
                 parse_math=False, va="baseline")
        acts = {(c[0], c[1], c[2]): c[3] for c in e.get("cells") or []}
        focus = tuple(e["cell"]) if e.get("cell") else None
        gtop = top + title_h + label_h
        for g, left, label in grids:
            h, w = g["height"], g["width"]
            fig.text(left / width, 1 - (gtop - 4) / height, label, fontsize=8, parse_math=False,
                     va="baseline", color="#333333")
            ax = fig.add_axes((left / width, 1 - (gtop + h * cell_px) / height, w * cell_px / width,
                               h * cell_px / height))
            ax.imshow(_rgb(g["cells"]), interpolation="nearest", aspect="auto", resample=False,
                      extent=(-0.5, w - 0.5, h - 0.5, -0.5))
            ax.set_axis_off()
            for r in range(h):
                for c in range(w):
                    a = acts.get((g["grid"], r, c), 0.0)
                    if a > 0:  # a white inner square, its side growing with the activation
                        side = 0.2 + 0.5 * min(1.0, a / max_act)
                        ax.add_patch(Rectangle((c - side / 2, r - side / 2), side, side, fill=False,
                                               edgecolor="white", linewidth=max(0.6, cell_px * 0.06)))
                    if focus == (g["grid"], r, c):
                        ax.add_patch(Rectangle((c - 0.45, r - 0.45), 0.9, 0.9, fill=False, edgecolor="#ff00ff",
                                               linewidth=max(0.8, cell_px * 0.08)))
            boxes.append(GridBox(e["rank"], g["grid"], left, gtop, h, w, cell_px,
                                 tuple(tuple(row) for row in g["cells"])))
        top = gtop + row_h + gap
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        fig.savefig(tmp, dpi=DPI, format="png")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return boxes


def write_figures(fdir, latents, out_dir=None, n_examples: int = 4) -> list[Path]:
    """``<out_dir or FDIR/figures>/latent-<L>.png`` for each latent; every latent is checked first."""
    fd = open_fdir(fdir)
    for latent in latents:
        if not 0 <= latent < fd.d_sae:
            raise UserError(f"--png {latent}: no such latent; this SAE has latents 0..{fd.d_sae - 1}")
    folder = Path(out_dir) if out_dir is not None else fd.path / "figures"
    paths = []
    for latent in latents:
        path = folder / f"latent-{latent}.png"
        latent_figure(fd, latent, path, n_examples)
        paths.append(path)
    return paths
