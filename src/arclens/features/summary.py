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
    """[F, P] float64: each latent's F1 as a detector ("fires") of each property."""
    cols = [c for _, _, c in properties]
    tp = acc.role_fires[:, cols].astype(np.float64)
    den = acc.n_fires[:, None].astype(np.float64) + acc.role_tokens[cols][None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, 2 * tp / np.where(den > 0, den, 1), 0.0)


def coverage(acc, properties=PROPERTIES) -> tuple[dict, np.ndarray]:
    """features.json's coverage block (for `properties`) and the [F, P] F1 matrix."""
    f1 = coverage_f1(acc, properties)
    props, families = {}, {}
    for j, (name, family, col) in enumerate(properties):
        n_prop = int(acc.role_tokens[col])
        if n_prop == 0:
            continue  # a property no token has says nothing about the SAE
        best = int(np.argmax(f1[:, j]))
        tp = int(acc.role_fires[best, col])
        fires = int(acc.n_fires[best])
        props[name] = {"latent": best, "f1": float(f1[best, j]),
                       "precision": tp / fires if fires else 0.0, "recall": tp / n_prop, "n_tokens": n_prop}
        families.setdefault(family, []).append(props[name]["f1"])
    mean = float(np.mean([p["f1"] for p in props.values()])) if props else None
    return {"properties": props, "mean": mean,
            "family_means": {k: float(np.mean(v)) for k, v in families.items()}}, f1


def best_properties(f1: np.ndarray, acc, properties=PROPERTIES) -> list[dict | None]:
    present = np.asarray([acc.role_tokens[c] > 0 for _, _, c in properties])
    out: list[dict | None] = []
    if not present.any():
        return [None] * len(f1)
    masked = np.where(present[None, :], f1, -1.0)
    best = np.argmax(masked, axis=1)
    for f, j in enumerate(best.tolist()):
        out.append({"name": properties[j][0], "f1": float(f1[f, j])} if f1[f, j] > 0 else None)
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
           "quantile_intervals"]
