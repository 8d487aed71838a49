"""Show point "Exact statistics": every statistic of `arclens features` on a small store equals a
brute-force numpy recomputation from the store's arrays and the SAE's weights (frequencies,
the top-K exactly, role and colour shares, consistency; and the rest of the files too)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from tests.support import features_brute as fb
from tests.support.features_brute import SETTINGS, read_fdir


@pytest.fixture(scope="module")
def case(exact_run, exact_store, exact_brute):
    arch, sae, fdir = exact_run
    stored, tasks_by_id = exact_brute
    brute = fb.compute(stored, tasks_by_id, exact_store.tokenizer, sae, "blocks.1.hook_resid_post")
    return arch, sae, read_fdir(fdir), brute


def test_the_data_is_not_degenerate(case):
    """The checks below mean something: latents fire at varied rates, shares vary, ties occur."""
    _, _, (_doc, _arrays, examples, _), brute = case
    n_fires = (brute.z > 0).sum(0)
    assert (n_fires > 0).sum() >= 40 and len(set(n_fires.tolist())) > 20
    tops = [e for e in examples if e["kind"] == "top"]
    by_latent = Counter((e["latent"], e["activation"]) for e in tops)
    assert max(by_latent.values()) >= 3, "no tied activations in any top-K"
    assert len({e["key"] for e in tops}) > 10


def test_frequencies_means_maxima_and_masses(case):
    _, _, (doc, arrays, _, _), brute = case
    m = fb.masses(brute)
    n = len(brute.z)
    assert doc["n_tokens"] == n
    np.testing.assert_array_equal(arrays["n_fires"], m["n_fires"])
    np.testing.assert_allclose(arrays["frequency"], m["n_fires"] / n, rtol=1e-12)
    for name in ("mass", "cell_mass", "border_mass", "grid_kind_mass", "colour_mass", "shown_colour_mass",
                 "row_mass", "col_mass"):
        np.testing.assert_allclose(arrays[name], m[name], rtol=1e-6, atol=1e-9, err_msg=name)
    fired = m["n_fires"] > 0
    np.testing.assert_allclose(arrays["mean_act"][fired], m["mass"][fired] / m["n_fires"][fired], rtol=1e-6)
    np.testing.assert_array_equal(arrays["max_act"][fired], m["max_act"][fired])
    assert np.isnan(arrays["mean_act"][~fired]).all() and np.isnan(arrays["max_act"][~fired]).all()
    for row in doc["latents"]:
        f = row["latent"]
        assert row["n_fires"] == m["n_fires"][f]
        assert row["frequency"] == pytest.approx(m["n_fires"][f] / n, rel=1e-6)
        if fired[f]:
            assert row["max_act"] == pytest.approx(m["max_act"][f], rel=1e-7)
            assert row["mean_act"] == pytest.approx(m["mass"][f] / m["n_fires"][f], rel=1e-6)
        else:
            assert row["max_act"] is None and row["mean_act"] is None


def test_role_colour_row_col_and_border_shares(case):
    _, _, (doc, _arrays, _, _), brute = case
    m = fb.masses(brute)
    kinds = ("train_input", "train_output", "test_input", "answer")
    checked = 0
    for row in doc["latents"]:
        f = row["latent"]
        cell = m["cell_mass"][f]
        if m["mass"][f] == 0:
            assert row["cell_share"] is None
            continue
        assert row["cell_share"] == pytest.approx(cell / m["mass"][f], rel=1e-6)
        if cell == 0:
            assert row["grid_kind_share"] is None and row["colour_share"] is None
            continue
        checked += 1
        assert list(row["grid_kind_share"]) == list(kinds)
        np.testing.assert_allclose([row["grid_kind_share"][k] for k in kinds], m["grid_kind_mass"][f] / cell,
                                   rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(row["colour_share"], m["colour_mass"][f] / cell, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(row["shown_colour_share"], m["shown_colour_mass"][f] / cell, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(row["row_share"], m["row_mass"][f] / cell, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(row["col_share"], m["col_mass"][f] / cell, rtol=1e-6, atol=1e-7)
        assert row["border_share"] == pytest.approx(m["border_mass"][f] / cell, rel=1e-6)
        assert row["role_specificity"] == pytest.approx((m["grid_kind_mass"][f] / cell).max(), rel=1e-6)
        assert row["colour_specificity"] == pytest.approx((m["colour_mass"][f] / cell).max(), rel=1e-6)
    assert checked >= 30
    # original and shown colours differ (the colour maps are not the identity), so both are tested
    assert not np.allclose(m["colour_mass"], m["shown_colour_mass"])
    base = doc["base_rates"]
    assert base["cells"] == int((brute.kind >= 0).sum())
    assert base["colour"] == [int(((brute.kind >= 0) & (brute.colour == c)).sum()) for c in range(10)]
    assert base["grid_kind"] == {k: int((brute.kind == i).sum()) for i, k in enumerate(kinds)}


def test_top_k_is_exact_with_ties_broken_by_key_then_position(case):
    _, _, (_, _, examples, _), brute = case
    k = SETTINGS["top_k"]
    got = {}
    for e in examples:
        if e["kind"] == "top":
            got.setdefault(e["latent"], []).append((e["rank"], e["key"], e["position"], e["activation"]))
    for f in range(brute.z.shape[1]):
        want = fb.top_k(brute, f, k)
        have = sorted(got.get(f, []))
        assert [r for r, *_ in have] == list(range(len(want)))
        assert [(key, pos) for _, key, pos, _ in have] == [(key, pos) for key, pos, _ in want], f"latent {f}"
        assert [np.float32(a) for *_, a in have] == [np.float32(v) for *_, v in want]


def test_histograms(case):
    _, _, (_, arrays, _, _), brute = case
    np.testing.assert_array_equal(arrays["hist_counts"], fb.histogram(brute))
    np.testing.assert_array_equal(arrays["hist_edges"], fb.EDGES)
    assert arrays["hist_counts"].sum() == (brute.z > 0).sum()


def test_consistency(case):
    _, _, (doc, arrays, _, _), brute = case
    want, cells = fb.consistency(brute)
    np.testing.assert_array_equal(arrays["consistency_cells"], cells)
    np.testing.assert_allclose(arrays["consistency"], want, rtol=1e-12, equal_nan=True)
    assert (cells > 0).sum() >= 30 and len(set(np.round(want[cells > 0], 6))) > 10
    for row in doc["latents"]:
        w = want[row["latent"]]
        assert (row["consistency"] is None) == bool(np.isnan(w))
        if row["consistency"] is not None:
            assert row["consistency"] == pytest.approx(w, rel=1e-6)


def test_coverage(case):
    """Coverage as Karvonen et al. define it: per threshold the best latent's F1 per property,
    averaged over properties, at the best threshold; thresholds on each latent's interval grid."""
    _, _, (doc, arrays, _, _), brute = case
    q = SETTINGS["quantiles"]
    props = fb.properties(brute)
    cov = doc["coverage"]
    present = {name: mask for name, mask in props.items() if mask.any()}
    assert set(cov["properties"]) == set(present)
    scores = {name: fb.f1(brute, mask, q) for name, mask in present.items()}  # [F, Q] each
    for name, s in scores.items():
        f, j = divmod(int(np.argmax(s)), q)
        got = cov["properties"][name]
        assert (got["latent"], got["threshold_index"]) == (f, j), name
        assert got["f1"] == pytest.approx(s[f, j], rel=1e-9)
        assert got["n_tokens"] == int(present[name].sum())
    per_threshold = np.mean([s.max(axis=0) for s in scores.values()], axis=0)
    assert cov["threshold_index"] == int(np.argmax(per_threshold))
    assert cov["mean"] == pytest.approx(per_threshold.max(), rel=1e-9)
    assert any(p["threshold_index"] > 0 for p in cov["properties"].values())  # thresholds above 0 are exercised
    names = list(props)  # column order of coverage_f1 is the property order
    assert arrays["coverage_f1"].shape == (brute.z.shape[1], len(names))
    for p, name in enumerate(names):
        if name in scores:
            np.testing.assert_allclose(arrays["coverage_f1"][:, p], scores[name].max(axis=1), rtol=1e-6)


def test_quantile_intervals_and_examples(case):
    _, _, (doc, _, examples, _), brute = case
    q, per = SETTINGS["quantiles"], SETTINGS["quantile_examples"]
    got = {}
    for e in examples:
        if e["kind"] == "quantile":
            got.setdefault(e["latent"], []).append(e)
    for row in doc["latents"]:
        f = row["latent"]
        counts = fb.interval_counts(brute, f, q)
        if not counts:
            assert row["quantiles"] is None and f not in got
            continue
        assert {iv["index"]: iv["count"] for iv in row["quantiles"]["intervals"]} == counts
        assert [iv["index"] for iv in row["quantiles"]["intervals"]] == sorted(counts, reverse=True)
        draws = fb.quantile_draws(brute, f, q, per)
        lines = sorted(got[f], key=lambda e: e["rank"])
        want = [(j, key, pos) for j in sorted(draws, reverse=True) for key, pos in draws[j]]
        assert [(e["interval"]["index"], e["key"], e["position"]) for e in lines] == want, f"latent {f}"
        for e in lines:
            assert e["interval"]["low"] <= e["activation"] < e["interval"]["high"]


def test_example_cells_and_context(case):
    _, _, (_, _, examples, _), brute = case
    for e in examples:
        _info, arrays, _truth, rows = brute.samples[e["key"]]
        z = brute.z[rows, e["latent"]]
        i = int(np.flatnonzero(arrays["position"] == e["position"])[0])
        assert np.float32(z[i]) == np.float32(e["activation"])
        want_cells = sorted([int(arrays["grid"][t]), int(arrays["row"][t]), int(arrays["col"][t]), np.float32(z[t])]
                            for t in np.flatnonzero((z > 0) & (arrays["grid"] >= 0)))
        assert sorted([g, r, c, np.float32(a)] for g, r, c, a in e["cells"]) == want_cells
        assert e["cell"] == ([int(arrays["grid"][i]), int(arrays["row"][i]), int(arrays["col"][i])]
                             if arrays["grid"][i] >= 0 else None)
        lo, hi = max(0, i - SETTINGS["context"]), min(len(z), i + SETTINGS["context"] + 1)
        ctx = e["context"]
        assert ctx["positions"] == arrays["position"][lo:hi].tolist()
        assert ctx["token_ids"] == arrays["token_id"][lo:hi].tolist()
        assert [np.float32(a) for a in ctx["acts"]] == [np.float32(v) for v in z[lo:hi]]


def test_token_strings_and_samples(case, exact_store):
    _, _, (_, _, examples, samples), _ = case
    from arclens.features.cells import prompt_slots
    from arclens.prompts import Augmentation

    tokenizer = exact_store.tokenizer
    by_id = {t.task_id: t for t in exact_store.tasks}
    assert {e["key"] for e in examples} == set(samples)
    for e in examples[:200]:
        assert e["context"]["tokens"] == [tokenizer.decode([i]) for i in e["context"]["token_ids"]]
        assert e["token"] == tokenizer.decode([e["context"]["token_ids"][e["context"]["positions"].index(e["position"])]])
    for key, s in samples.items():
        task, aug = by_id[s["task_id"]], Augmentation.from_json(s["augmentation"])
        n = len(task.train)
        assert [g["grid"] for g in s["grids"]] == sorted(prompt_slots("output-from-examples-v1", n, True))
        for g in s["grids"]:
            number = g["grid"]
            if number < 2 * n:
                ex = task.train[aug.train_order[number // 2]]
                original = ex.input if number % 2 == 0 else ex.output
                assert g["label"] == f"train {'input' if number % 2 == 0 else 'output'} {number // 2 + 1}"
            else:
                t = task.test[s["test_index"]]
                original = t.input if number == 2 * n else t.output
                assert g["label"] == ("test input" if number == 2 * n else "answer")
            assert g["cells"] == [list(r) for r in aug.apply(original)]
        assert s["aug_index"] == int(key.rsplit("/", 1)[1])


def test_logit_effect(case, exact_store):
    _, sae, (doc, arrays, _, _), _ = case
    from safetensors.numpy import load_file

    weights = load_file(str(exact_store.model_dir / "model.safetensors"))
    head = weights.get("lm_head.weight", weights["model.embed_tokens.weight"]).astype(np.float64)
    effect = (np.asarray(sae.W_dec, np.float64) * weights["model.norm.weight"]) @ head[: len(exact_store.tokenizer)].T
    n = SETTINGS["logits"]
    want_top = np.argsort(-effect, axis=1, kind="stable")[:, :n]
    np.testing.assert_array_equal(arrays["top_logit_ids"], want_top)
    np.testing.assert_allclose(arrays["top_logit_values"], np.take_along_axis(effect, want_top, 1), rtol=1e-5)
    np.testing.assert_array_equal(arrays["bottom_logit_ids"], np.argsort(effect, axis=1, kind="stable")[:, :n])
    row = doc["latents"][0]
    assert [t for t, _ in row["top_logits"]] == [exact_store.tokenizer.decode([i]) for i in want_top[0]]
    assert all(math.isfinite(v) for _, v in row["bottom_logits"])
