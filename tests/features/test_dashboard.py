"""`arclens dashboard FDIR --out SITE`, end to end: a small store and SAE -> `arclens features` ->
the site, opened in headless Debian Chromium (Playwright pointed at /usr/bin/chromium; nothing is
downloaded). Show points (issue 15): no console errors; a latent page shows, for its first
example, every grid cell of the sample in the right ARC colour; sorting the index works; HTML in a
task id (and in a token string and a path) shows as text and no script from it runs; a screenshot
is saved under the test's output.

The truth of every check comes from the store and the SAE weights, not from the FDIR: the cells
of a sample are the store's (grid, row, col) token roles, each cell's colour the digit its token
spells, and where the latent fires is numpy's ReLU of the SAE's encoder over the stored
activations.

Task ids cannot hold whitespace or "/" (data/validation.py), so a task id cannot carry a working
``<img src=x onerror=...>``; it holds markup that would create elements (``<b>``, ``<i>``) and
entities. The working payload is a token string of the model's vocabulary, which latent 0's
decoder direction promotes (so it is in the logit table), and a folder name in the SAE's path.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.cli import run_cli

from arclens.cli import main

HOOK = "blocks.1.hook_resid_post"
PAYLOAD = "<img src=x onerror=alert(1)>"
PATH_PAYLOAD = "<img src=x onerror=alert(2)>"
HTML_TASK = "<b>bold\"'&amp;<i>"
PALETTE = ["#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00",
           "#AAAAAA", "#F012BE", "#FF851B", "#7FDBFF", "#870C25"]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@dataclass
class Site:
    root: Path
    model: Path
    store: Path
    sae: object
    fdir: Path
    site: Path


def _tasks() -> dict:
    rng = np.random.default_rng(3)

    def grid():
        h, w = rng.integers(2, 6, size=2)
        return rng.integers(0, 10, size=(h, w)).tolist()

    return {name: {"train": [{"input": grid(), "output": grid()} for _ in range(2)],
                   "test": [{"input": grid(), "output": grid()}]}
            for name in (HTML_TASK, "t001", "t002")}


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_model_dir) -> Site:
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer

    from arclens.sae import SAEConfig, new_sae, save

    root = tmp_path_factory.mktemp("dashboard")
    model = root / "model"
    shutil.copytree(tiny_model_dir, model)
    tok = AutoTokenizer.from_pretrained(str(model))
    tok.add_tokens([PAYLOAD])  # a vocabulary entry that is markup; the prompts never contain it
    tok.save_pretrained(str(model), save_jinja_files=False)
    payload_id = tok.convert_tokens_to_ids(PAYLOAD)
    (root / "tasks.json").write_text(json.dumps(_tasks()))
    assert main(["extract", "--model", str(model), "--tasks", str(root / "tasks.json"), "--out", str(root / "store"),
                 "--hooks", HOOK, "--with-answer", "--predictions-per-task", "2", "--dtype", "float32"]) == 0

    rng = np.random.default_rng(0)
    weights = load_file(str(model / "model.safetensors"))
    w_dec = (rng.standard_normal((32, 64)) / 8).astype(np.float32)
    # Latent 0's direction through the final norm and the tied unembedding is the payload's embedding.
    w_dec[0] = weights["model.embed_tokens.weight"][payload_id] / weights["model.norm.weight"]
    sae = new_sae(SAEConfig("standard", 64, 32, 64, hook_name=HOOK), w_dec.T.copy(),
                  np.full(32, -0.01, np.float32), w_dec, np.zeros(64, np.float32))
    sae_dir = root / PATH_PAYLOAD / "sae"
    save(sae, str(sae_dir))
    assert main(["features", "--sae", str(sae_dir), "--store", str(root / "store"), "--out", str(root / "fdir"),
                 "--top-k", "8"]) == 0
    assert main(["dashboard", str(root / "fdir"), "--out", str(root / "site")]) == 0
    return Site(root, model, root / "store", sae, root / "fdir", root / "site")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.fail("Debian's Chromium is not installed at /usr/bin/chromium; install it with "
                    "`apt-get install -y chromium` (.ci/run does) -- the dashboard test drives it headless")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 1000})
        try:
            yield context
        finally:
            context.close()


class Page:
    """A fresh page that records console messages, page errors, dialogs and requests."""

    def __init__(self, context):
        self.page = context.new_page()
        self.console, self.errors, self.dialogs, self.requests = [], [], [], []
        self.page.on("console", lambda m: self.console.append((m.type, m.text)))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.on("request", lambda r: self.requests.append(r.url))

    def open(self, path: Path):
        self.page.goto(path.as_uri())
        self.page.wait_for_selector("body[data-ready='1']", timeout=15_000)
        return self.page

    def check_clean(self):
        bad = [m for m in self.console if m[0] in ("error", "warning")]
        assert not bad and not self.errors, (bad, self.errors)
        assert not self.dialogs, f"a script from the data ran: {self.dialogs}"
        assert all(u.startswith("file://") for u in self.requests), self.requests
        assert self.page.evaluate("document.querySelectorAll('img, b, i, iframe, object, embed').length") == 0


def _fires(site: Site, key: str, latent: int) -> dict[tuple[int, int, int], float]:
    """(grid, row, col) -> activation where ``latent`` fires on ``key``'s cells, by numpy."""
    from tests.support.stores import stored

    _, arrays = stored(site.store)[key]
    w_enc, b_enc = np.asarray(site.sae.W_enc, np.float64), np.asarray(site.sae.b_enc, np.float64)
    b_dec = np.asarray(site.sae.b_dec, np.float64)
    z = np.maximum((arrays[HOOK].astype(np.float64) - b_dec) @ w_enc[:, latent] + b_enc[latent], 0)
    out: dict = {}
    for g, r, c, a in zip(arrays["grid"], arrays["row"], arrays["col"], z):
        if g >= 0 and a > 0:
            out[(int(g), int(r), int(c))] = max(out.get((int(g), int(r), int(c)), 0.0), float(a))
    return out


def _cells_of(site: Site, key: str) -> dict[tuple[int, int, int], int]:
    """(grid, row, col) -> colour as shown, for every cell token of ``key`` in the store."""
    from tests.support.stores import stored
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(site.model))
    _, arrays = stored(site.store)[key]
    cells = {}
    for t, g, r, c in zip(arrays["token_id"], arrays["grid"], arrays["row"], arrays["col"]):
        if g >= 0:
            cells[(int(g), int(r), int(c))] = int(tok.convert_ids_to_tokens(int(t)))
    return cells


def _rgb(hex_colour: str) -> str:
    return "rgb({}, {}, {})".format(*(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)))


def test_index_sorts_and_filters_without_console_errors(site, browser, tmp_path):
    p = Page(browser)
    page = p.open(site.site / "index.html")
    rows = json.loads((site.fdir / "features.json").read_text())["latents"]
    assert page.locator("#latent-rows tr").count() == len(rows) == 32

    def column(key):
        return [None if v is None else float(v) for v in
                page.eval_on_selector_all(f"#latent-rows td[data-key='{key}']", "tds => tds.map(t => t.dataset.value ?? null)")]

    page.click("th[data-key='frequency']")  # first click on a statistic: largest first
    values = column("frequency")
    assert values == sorted((r["frequency"] for r in rows), reverse=True)
    page.click("th[data-key='frequency']")
    assert column("frequency") == sorted(r["frequency"] for r in rows)
    page.click("th[data-key='consistency']")
    known = sorted((r["consistency"] for r in rows if r["consistency"] is not None), reverse=True)
    assert column("consistency") == known + [None] * (len(rows) - len(known))  # nulls last
    latents = [int(v) for v in page.eval_on_selector_all("#latent-rows tr", "trs => trs.map(t => t.dataset.latent)")]
    assert sorted(latents) == list(range(32))

    page.fill("input[data-filter='role_specificity'][data-bound='min']", "60")
    shown = [int(v) for v in page.eval_on_selector_all("#latent-rows tr", "trs => trs.map(t => t.dataset.latent)")]
    assert sorted(shown) == [r["latent"] for r in rows if (r["role_specificity"] or 0) >= 0.6]
    values = column("consistency")  # still sorted as chosen
    known = [v for v in values if v is not None]
    assert known == sorted(known, reverse=True) and values == known + [None] * (len(values) - len(known))
    assert page.inner_text("#row-count").startswith(f"{len(shown)} of 32 latents")
    assert PATH_PAYLOAD in page.inner_text("header")  # the SAE's path, as text
    p.check_clean()
    page.screenshot(path=str(tmp_path / "index.png"), full_page=True)
    assert (tmp_path / "index.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_latent_page_draws_every_cell_of_its_first_example_in_arc_colours(site, browser, tmp_path):
    latent = 0
    p = Page(browser)
    page = p.open(site.site / "latents" / f"{latent}.html")
    first = page.locator("article.example").first
    page.wait_for_selector("article.example[data-ready='1']", timeout=15_000)
    key = first.get_attribute("data-key")
    truth = _cells_of(site, key)
    drawn = first.evaluate("""card => [...card.querySelectorAll('.grid')].flatMap(g =>
        [...g.querySelectorAll('.cell')].map(c => [Number(g.dataset.grid), Number(c.dataset.row),
        Number(c.dataset.col), getComputedStyle(c).backgroundColor, c.classList.contains('fires')]))""")
    assert len(drawn) == len(truth) > 0  # as many cells as the sample's grids have
    assert {(g, r, c): colour for g, r, c, colour, _ in drawn} == {k: _rgb(PALETTE[v]) for k, v in truth.items()}
    # Each cell is outlined where (and only where) the latent fires on it.
    assert {(g, r, c) for g, r, c, _, fires in drawn if fires} == set(_fires(site, key, latent))
    # Every grid is labelled with its role.
    labels = first.locator(".grid-box .role").all_text_contents()
    assert labels == ["train input 1", "train output 1", "train input 2", "train output 2", "test input", "answer"]
    p.check_clean()
    page.screenshot(path=str(tmp_path / "latent.png"), full_page=True)
    assert (tmp_path / "latent.png").stat().st_size > 10_000
    print(f"screenshots: {tmp_path}")


def test_html_from_task_ids_tokens_and_paths_is_text_and_never_runs(site, browser):
    p = Page(browser)
    page = p.open(site.site / "latents" / "0.html")
    # latent 0 promotes the markup token: it is in the logit table, as SVG text
    tokens = page.eval_on_selector_all("svg.logits text.token title", "ts => ts.map(t => t.textContent)")
    assert any(t.startswith(PAYLOAD.replace(" ", "·")) for t in tokens), tokens
    # every example of the HTML task names it, as text (before and after its sample file loaded)
    page.wait_for_selector("article.example[data-ready='1']")
    named = page.evaluate("""task => [...document.querySelectorAll('article.example')]
        .filter(a => a.dataset.key.startsWith(task + '/'))
        .map(a => [a.querySelector('.task-id').textContent, a.querySelector('.key').textContent, a.dataset.key])""",
                          HTML_TASK)
    assert named and all(t == HTML_TASK and k == key for t, k, key in named), named
    p.check_clean()
    raw = "".join(f.read_text() for f in site.site.rglob("*.html")) + "".join(
        f.read_text() for f in (site.site / "samples").glob("*.js"))
    assert "<img" not in raw and "<b>" not in raw  # never markup in the files either


def test_site_layout_and_no_network(site):
    d_sae = 32
    files = {p.relative_to(site.site).as_posix() for p in site.site.rglob("*") if p.is_file()}
    n_samples = sum(1 for line in (site.fdir / "samples.jsonl").read_text().splitlines() if line.strip())
    assert files == ({"index.html", ".arclens-dashboard", "assets/dashboard.js", "assets/dashboard.css"}
                     | {f"latents/{i}.html" for i in range(d_sae)} | {f"samples/{i}.js" for i in range(n_samples)})
    for f in site.site.rglob("*"):
        if f.is_file() and f.suffix in (".html", ".js", ".css"):
            text = f.read_text()
            # The only URL in the site is the SVG namespace name, which is never fetched.
            assert "://" not in text.replace("http://www.w3.org/2000/svg", ""), f
    index = (site.site / "index.html").read_text()
    assert "Content-Security-Policy" in index and "script-src 'self'" in index


def test_rebuild_replaces_its_own_site_and_nothing_else(site, tmp_path):
    out = tmp_path / "site"
    assert main(["dashboard", str(site.fdir), "--out", str(out)]) == 0
    (out / "stale.html").write_text("old")
    assert main(["dashboard", str(site.fdir), "--out", str(out)]) == 0
    assert not (out / "stale.html").exists() and (out / "index.html").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    r = run_cli(["dashboard", site.fdir, "--out", other])
    assert r.returncode == 2 and "not written by `arclens dashboard`" in r.stderr
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def test_a_folder_not_written_by_features_is_one_line_exit_2(site, tmp_path, capsys):
    cases = {}
    plain = tmp_path / "plain"
    plain.mkdir()
    cases["no features.json"] = plain
    wrong = tmp_path / "wrong"
    shutil.copytree(site.fdir, wrong)
    meta = json.loads((wrong / "features.json").read_text())
    (wrong / "features.json").write_text(json.dumps(dict(meta, format="something-else")))
    cases["is not 'arclens-features'"] = wrong
    partial = tmp_path / "partial"
    shutil.copytree(site.fdir, partial)
    (partial / "samples.jsonl").unlink()
    cases["no samples.jsonl"] = partial
    cases["no such folder"] = tmp_path / "absent"
    for words, fdir in cases.items():
        assert main(["dashboard", str(fdir), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and words in err, err
    assert not (tmp_path / "out").exists()
    r = run_cli(["dashboard", plain, "--out", tmp_path / "out"])
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "arclens features" in r.stderr


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text() | st.floats(allow_nan=False, allow_infinity=False),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                    max_leaves=20))
def test_data_blocks_cannot_hold_markup_and_round_trip(value):
    from arclens.features.dashboard.build import json_for_html

    text = json_for_html(value)
    assert not any(ch in text for ch in "<>&\u2028\u2029")
    assert json.loads(text) == value


def test_histogram_bins_follow_the_fdir_columns():
    from arclens.features.dashboard.build import histogram

    edges = 10.0 ** np.linspace(-5, 5, 101)
    counts = np.zeros(102, np.int64)
    counts[[0, 50, 51, 101]] = [1, 2, 3, 4]
    bins = histogram(edges, counts)
    assert bins[0] == [0.0, edges[0], 1] and bins[-1] == [edges[-1], edges[-1] * 10, 4]
    assert [b[2] for b in bins] == counts.tolist()  # the span from the first to the last non-empty column
    assert bins[50] == [edges[49], edges[50], 2]
    assert histogram(edges, np.zeros(102, np.int64)) == []
