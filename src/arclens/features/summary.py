"""From the accumulated sums to the per-latent values of features.json and latents.safetensors:
shares, specificities, coverage (docs/FEATURES.md). Pure numpy on ``[F, ...]`` arrays."""

from __future__ import annotations

import numpy as np

from arclens.features.layout import BLOCKS, GRID_KINDS, PROPERTIES, SHOWN_PROPERTIES


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den == 0 (den broadcast over num's trailing axis)."""
    den = np.asarray(den, np.float64)
    if num.ndim > den.ndim:
        den = den[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _max_or_nan(x: np.ndarray) -> np.ndarray:
    out = np.full(len(x), np.nan)
    ok = ~np.isnan(x).any(axis=1)
    out[ok] = x[ok].max(axis=1)
    return out


def latent_arrays(acc) -> dict[str, np.ndarray]:
    """Every per-latent array of latents.safetensors except the logits and the coverage F1."""
    b = BLOCKS
    rm = acc.role_mass
    cell_mass = rm[:, b["cell"].start]
    fired = acc.n_fires > 0
    out = {
        "n_fires": acc.n_fires.copy(),
        "frequency": acc.n_fires / max(acc.n_tokens, 1),
        "mean_act": _ratio(acc.mass, acc.n_fires),
        "max_act": np.where(fired, acc.max.astype(np.float64), np.nan),
        "mass": acc.mass.copy(),
        "cell_mass": cell_mass,
        "border_mass": rm[:, b["border"].start],
        "grid_kind_mass": rm[:, b["grid_kind"].slice],
        "colour_mass": rm[:, b["colour"].slice],
        "shown_colour_mass": rm[:, b["shown_colour"].slice],
        "row_mass": rm[:, b["row"].slice],
        "col_mass": rm[:, b["col"].slice],
        "hist_counts": acc.hist.copy(),
    }
    out["cell_share"] = _ratio(cell_mass, acc.mass)
    for name in ("grid_kind", "colour", "shown_colour", "row", "col"):
        out[f"{name}_share"] = _ratio(out[f"{name}_mass"], cell_mass)
    out["border_share"] = _ratio(out["border_mass"], cell_mass)
    out["role_specificity"] = _max_or_nan(out["grid_kind_share"])
    out["colour_specificity"] = _max_or_nan(out["colour_share"])
    out["shown_colour_specificity"] = _max_or_nan(out["shown_colour_share"])
    consistency, cells = acc.consistency.finish()
    out["consistency"], out["consistency_cells"] = consistency, cells
    return out


def coverage_f1(acc, properties=PROPERTIES) -> np.ndarray:
    """[F, Q, P] float64: each latent's F1 as a detector of each property when "active" means an
    activation of at least threshold j (j = 0: fires at all; j >= 1: >= j * 2**e / Q, the latent's
    interval grid), as Karvonen et al. threshold at fractions of each feature's maximum."""
    cols = [c for _, _, c in properties]
    # counts at or above interval j: reverse cumulative sums over the intervals
    fires = np.flip(np.cumsum(np.flip(acc.interval_counts, 1), 1), 1).astype(np.float64)  # [F, Q]
    tp = np.flip(np.cumsum(np.flip(acc.role_bins[:, :, cols], 1), 1), 1).astype(np.float64)  # [F, Q, P]
    den = fires[:, :, None] + acc.role_tokens[cols][None, None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, 2 * tp / np.where(den > 0, den, 1), 0.0)


def thresholds(acc) -> np.ndarray:
    """[F, Q] the activation threshold of each interval index (0 for j = 0: fires at all)."""
    q = acc.n_intervals
    j = np.arange(q, dtype=np.float64)
    e = np.where(acc.n_fires > 0, acc.exponent, 0)
    return np.ldexp(j[None, :], e[:, None]) / q


def coverage(acc, properties=PROPERTIES) -> tuple[dict, np.ndarray]:
    """features.json's coverage block (for `properties`) and the [F, Q, P] F1 array."""
    f1 = coverage_f1(acc, properties)
    cols = [c for _, _, c in properties]
    present = acc.role_tokens[cols] > 0  # a property no token has says nothing about the SAE
    limits = thresholds(acc)
    props, families = {}, {}
    q = acc.n_intervals
    for p, (name, family, col) in enumerate(properties):
        if not present[p]:
            continue
        flat = f1[:, :, p].ravel()
        best = int(np.argmax(flat))  # lowest latent, then lowest threshold, on ties
        f, j = divmod(best, q)
        n_prop = int(acc.role_tokens[col])
        active = int(acc.interval_counts[f, j:].sum())
        tp = int(acc.role_bins[f, j:, col].sum())
        props[name] = {"latent": f, "f1": float(flat[best]), "threshold": float(limits[f, j]), "threshold_index": j,
                       "precision": tp / active if active else 0.0, "recall": tp / n_prop, "n_tokens": n_prop}
        families.setdefault(family, []).append(p)
    out = {"properties": props, "mean": None, "threshold_index": None, "family_means": {}}
    if props:
        # Karvonen et al.: per threshold, the best latent per property, averaged; then the best threshold
        per_threshold = f1[:, :, present].max(axis=0).mean(axis=1)  # [Q]
        j = int(np.argmax(per_threshold))
        out["mean"], out["threshold_index"] = float(per_threshold[j]), j
        best_at_j = f1[:, j, :].max(axis=0)
        out["family_means"] = {k: float(best_at_j[v].mean()) for k, v in families.items()}
    return out, f1


def best_properties(f1: np.ndarray, acc, properties=PROPERTIES) -> list[dict | None]:
    """Per latent: the property it detects best, at its best threshold."""
    present = np.asarray([acc.role_tokens[c] > 0 for _, _, c in properties])
    if not present.any():
        return [None] * len(f1)
    best_over_j = np.where(present[None, :], f1.max(axis=1), -1.0)  # [F, P]
    out: list[dict | None] = []
    for f, p in enumerate(np.argmax(best_over_j, axis=1).tolist()):
        out.append({"name": properties[p][0], "f1": float(best_over_j[f, p])} if best_over_j[f, p] > 0 else None)
    return out


def base_rates(acc) -> dict:
    b, t = BLOCKS, acc.role_tokens
    return {"tokens": int(acc.n_tokens), "cells": int(t[b["cell"].start]), "border": int(t[b["border"].start]),
            "grid_kind": {k: int(v) for k, v in zip(GRID_KINDS, t[b["grid_kind"].slice])},
            "colour": t[b["colour"].slice].tolist(), "shown_colour": t[b["shown_colour"].slice].tolist(),
            "row": t[b["row"].slice].tolist(), "col": t[b["col"].slice].tolist()}


def quantile_intervals(acc) -> list[dict | None]:
    """Per latent: the non-empty intervals, from the top (docs/FEATURES.md, quantile intervals)."""
    out: list[dict | None] = []
    q = acc.n_intervals
    for f in range(acc.d_sae):
        if acc.n_fires[f] == 0:
            out.append(None)
            continue
        top = float(np.ldexp(1.0, int(acc.exponent[f])))  # M, the power of two above max_act
        width = top / q
        counts = acc.interval_counts[f]
        intervals = [{"index": j, "low": j * top / q, "high": (j + 1) * top / q, "count": int(counts[j]),
                      "share": int(counts[j]) / int(acc.n_fires[f])} for j in range(q - 1, -1, -1) if counts[j]]
        out.append({"width": width, "intervals": intervals})
    return out


__all__ = ["SHOWN_PROPERTIES", "base_rates", "best_properties", "coverage", "coverage_f1", "latent_arrays",
           "quantile_intervals", "thresholds"]
