"""`arclens dashboard FDIR --out SITE`: a static site that opens from disk (file://), no server.

Layout (docs/DASHBOARD.md):

    SITE/index.html              the latent index: its rows inline, sorted and filtered in the page
    SITE/latents/<L>.html        one small page per latent: its statistics and examples, inline
    SITE/samples/<N>.js          one file per sample an example shows (its grids), written once and
                                 loaded by a latent page only when an example scrolls into view
    SITE/assets/dashboard.{js,css}

So a page stays small for any d_sae, and a sample shown by many latents is stored once. Data sit
in `<script type="application/json">` blocks (every `<`, `>`, `&` escaped, so no string can close
the block) and in `arclensSample(N, {...})` calls; all text reaches the page through
`textContent`, never as markup, and a Content-Security-Policy allows only the site's own script
files. File names are numbers, never task ids or keys.

The site is written into a sibling folder and renamed into place; an existing SITE is replaced
only if this command wrote it (a marker file), so nothing else is ever overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
from importlib import resources
from pathlib import Path

import numpy as np

from arclens.errors import UserError
from arclens.features.dashboard.fdir import FeatureDir, open_fdir

MARKER = ".arclens-dashboard"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "base-uri 'none'; form-action 'none'")
GRID_KINDS = ("train_input", "train_output", "test_input", "answer")
INDEX_KEYS = ("latent", "frequency", "n_fires", "mean_act", "max_act", "cell_share", "role_specificity",
              "colour_specificity", "shown_colour_specificity", "consistency", "consistency_cells",
              "border_share", "best_property")


def json_for_html(obj) -> str:
    """JSON that is safe inside a <script> block: no `<`, `>`, `&` or line separators literally."""
    try:
        text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except ValueError:
        raise UserError("the features folder holds NaN or infinite numbers, which JSON cannot carry "
                        "(docs/FEATURES.md writes null)") from None
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                    ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def page(kind: str, data: dict, root: str) -> str:
    """An HTML page whose only content is its data block and the site's script and style."""
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        "<title>arclens dashboard</title>\n"
        f"<link rel=\"stylesheet\" href=\"{root}assets/dashboard.css\">\n"
        f"<script type=\"application/json\" id=\"arclens-data\">{json_for_html(data)}</script>\n"
        f"<script src=\"{root}assets/dashboard.js\"></script>\n"
        f"</head><body data-page=\"{kind}\" data-root=\"{root}\">"
        "<noscript>This dashboard draws its pages with JavaScript; please enable it.</noscript>"
        "</body></html>\n"
    )


def _argmax_name(share, names):
    if not share:
        return None
    values = [share[n] for n in names] if isinstance(share, dict) else list(share)
    return names[int(np.argmax(values))] if isinstance(share, dict) else int(np.argmax(values))


def index_row(row: dict) -> dict:
    """What the index table shows of a features.json row (plus the top role and colour)."""
    out = {k: row.get(k) for k in INDEX_KEYS}
    out["top_role"] = _argmax_name(row.get("grid_kind_share"), GRID_KINDS)
    out["top_colour"] = _argmax_name(row.get("colour_share"), None)
    out["top_logits"] = [t for t, _ in (row.get("top_logits") or [])[:3]]
    return out


def histogram(edges: np.ndarray, counts: np.ndarray) -> list[list[float]]:
    """Non-empty span of one latent's log-spaced histogram as [low, high, count] bins: column 0 is
    (0, edges[0]), column i is [edges[i-1], edges[i]), the last column is >= edges[-1]."""
    nz = np.flatnonzero(counts)
    if len(nz) == 0:
        return []
    lows = np.concatenate([[0.0], edges])
    highs = np.concatenate([edges, [edges[-1] * 10]])
    return [[float(lows[i]), float(highs[i]), int(counts[i])] for i in range(nz[0], nz[-1] + 1)]


def _sample_script(number: int, s: dict) -> str:
    keep = ("key", "task_id", "test_index", "aug_index", "augmentation", "prompt_tokens", "grids")
    return f"arclensSample({number},{json_for_html({k: s.get(k) for k in keep})});\n"


def _summary(fd: FeatureDir) -> dict:
    ix = fd.index
    return {"sae": ix.get("sae"), "sae_config": ix.get("sae_config"), "source": ix.get("source"),
            "n_tokens": ix.get("n_tokens"), "d_sae": fd.d_sae, "created_at": ix.get("created_at"),
            "settings": ix.get("settings")}


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).exists())):
        raise UserError(f"--out {out}: exists and was not written by `arclens dashboard`; choose a new folder")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: no such parent folder {out.parent}")


def write_site(fd: FeatureDir, site: Path) -> int:
    """Write every file of the site into the empty folder ``site``; returns the number of pages."""
    for sub in ("assets", "latents", "samples"):
        (site / sub).mkdir(parents=True)
    for name in ("dashboard.js", "dashboard.css"):
        _write(site / "assets" / name, resources.files(__package__).joinpath("assets").joinpath(name).read_text("utf-8"))

    numbers: dict[str, int] = {}
    for s in fd.samples():
        numbers[s["key"]] = len(numbers)
        _write(site / "samples" / f"{numbers[s['key']]}.js", _sample_script(numbers[s["key"]], s))

    edges, counts = fd.histograms()
    summary = _summary(fd)
    summary["base_rates"] = fd.index.get("base_rates")
    rows = fd.index["latents"]

    def latent_page(latent: int, examples: list[dict]) -> None:
        for ex in examples:
            if ex.get("key") not in numbers:
                raise UserError(f"{fd.path / 'examples.jsonl'}: latent {latent} shows sample "
                                f"{ex.get('key')!r}, which samples.jsonl does not have")
            ex["sample"] = numbers[ex["key"]]
        data = {"latent": latent, "row": rows[latent], "histogram": histogram(edges, counts[latent]),
                "examples": examples, "summary": summary,
                "prev": latent - 1 if latent > 0 else None, "next": latent + 1 if latent + 1 < fd.d_sae else None}
        _write(site / "latents" / f"{latent}.html", page("latent", data, "../"))

    written = 0
    for latent, examples in fd.examples_by_latent():
        for gap in range(written, latent):  # latents without any example (never fire)
            latent_page(gap, [])
        latent_page(latent, examples)
        written = latent + 1
    for gap in range(written, fd.d_sae):
        latent_page(gap, [])

    index = {"summary": _summary(fd), "coverage": fd.index.get("coverage"),
             "base_rates": fd.index.get("base_rates"), "rows": [index_row(r) for r in rows]}
    _write(site / "index.html", page("index", index, ""))
    _write(site / MARKER, "written by `arclens dashboard`; replaced whole by the next run\n")
    return fd.d_sae


def build_dashboard(fdir, out) -> Path:
    """Build the site for ``fdir`` at ``out`` (validated first, written whole); returns index.html."""
    fd = open_fdir(fdir)
    out = Path(out)
    _check_out(out)
    staging = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        write_site(fd, staging)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out / "index.html"


def main(args) -> int:
    index = build_dashboard(args.fdir, args.out)
    print(index.resolve())
    return 0
