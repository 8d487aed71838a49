"""Writing an FDIR (docs/FEATURES.md): features.json, latents.safetensors, examples.jsonl and
samples.jsonl, into a temporary folder that is renamed into place once complete."""

from __future__ import annotations

import json
import operator
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from arclens.errors import UserError
from arclens.features.cells import CELL_CODE_GRID, prompt_slots
from arclens.features.fold import HIST_EDGES
from arclens.features.layout import GRID_KINDS, MAX_SIDE, PROPERTIES, SHOWN_PROPERTIES
from arclens.features.summary import (
    base_rates,
    best_properties,
    coverage,
    latent_arrays,
    quantile_intervals,
    thresholds,
)

FORMAT = "arclens-features"
VERSION = 1
FILES = ("features.json", "latents.safetensors", "examples.jsonl", "samples.jsonl")
_POSITION_MASK = np.int64(0xFFFFFFFF)


def f32(x) -> float | None:
    """A float32 value in its shortest round-trip form; None for NaN (JSON has no NaN)."""
    x = np.float32(x)
    return None if np.isnan(x) else float(str(x))


def f32_list(a) -> list:
    a = np.asarray(a, np.float32)
    return [None if s == "nan" else float(s) for s in a.astype(str).tolist()]


def is_fdir(path: Path) -> bool:
    try:
        return json.loads((path / "features.json").read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_out(out: Path) -> None:
    """Refuse, before any work, an --out that exists and is neither empty nor an FDIR."""
    if out.exists():
        if not out.is_dir():
            raise UserError(f"--out {out}: exists and is not a folder")
        if any(out.iterdir()) and not is_fdir(out):
            raise UserError(f"--out {out}: a non-empty folder that arclens features did not write; "
                            "choose another --out")
    probe = out.parent
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: {probe} is not writable")


def publish(tmp: Path, out: Path) -> None:
    """Rename the finished `tmp` folder to `out`, replacing an earlier FDIR there."""
    old = None
    if out.exists():
        old = out.with_name(f"{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _cell_prefixes(record) -> np.ndarray:
    """Per token of a sample, the JSON text that starts its cell's entry, "[grid,row,col," ("" off
    the cells): made once per sample, as most of examples.jsonl is these entries."""
    cols = record.columns
    grid, row, col = (cols[k].tolist() for k in ("grid", "row", "col"))
    return np.asarray([f"[{g},{r},{c}," if g >= 0 else "" for g, r, c in zip(grid, row, col)], dtype=object)


def _cells_json(record, prefixes: np.ndarray, offsets: np.ndarray, acts: np.ndarray) -> str:
    """`cells` of an example as JSON text: [grid, row, col, activation] of every cell where the
    latent fires, the largest activation over the cell's tokens (written straight from numpy:
    this is most of the bytes of examples.jsonl)."""
    cols = record.columns
    on_cell = cols["grid"][offsets] >= 0
    tokens, a = offsets[on_cell], acts[on_cell]
    if not len(a):
        return "[]"
    if record.multi_token_cells:
        g, r, c = (cols[k][tokens].astype(np.int64) for k in ("grid", "row", "col"))
        code = g * CELL_CODE_GRID + r * MAX_SIDE + c
        order = np.lexsort((-a, code))  # per cell, its largest activation first
        first = order[np.r_[True, code[order][1:] != code[order][:-1]]]
        tokens, a = tokens[first], a[first]
    values = np.asarray(a, np.float32).astype(str).tolist()
    return "[" + "],".join(map(operator.add, prefixes[tokens].tolist(), values)) + "]]"


class _ExampleWriter:
    """The JSON lines of examples.jsonl, written as text: the numbers of an example come from its
    (sample, latent), shared by a latent's examples, so their JSON is made once per pair, and
    the token strings' once per token (json.dumps of the same line gives the same bytes:
    tests/features/test_exact_statistics.py reads them back against brute force)."""

    def __init__(self, fold, strings, context: int, keys: list[str], first_latent: int = 0):
        self.captures, self.d_sae, self.strings, self.context, self.keys = fold.captures, fold.d_sae, strings, context, keys
        self.first_latent = first_latent
        self._tokens: dict[int, str] = {}  # token id -> its string as JSON
        self.pairs: dict[int, str] = {}  # (sample, latent) -> its cells as JSON
        self._prefixes: dict[int, np.ndarray] = {}  # key rank -> _cell_prefixes (one latent's samples)

    def token(self, token_id: int) -> str:
        text = self._tokens.get(token_id)
        if text is None:
            text = self._tokens[token_id] = json.dumps(self.strings([token_id])[0])
        return text

    def line(self, latent: int, kind: str, rank: int, order: int, value: float, interval: dict | None) -> tuple[str, str]:
        """(key, line) of one example: its latent, kind and rank, its token's (key rank << 32 |
        position) and activation, and (quantile examples) its interval."""
        key_rank, position = int(order >> 32), int(order & _POSITION_MASK)
        record = self.captures.samples[key_rank]
        code = key_rank * self.d_sae + latent  # (the fold's own latent number)
        offsets, acts = self.captures.acts(code)
        cells = self.pairs.get(code)
        if cells is None:
            prefixes = self._prefixes.get(key_rank)
            if prefixes is None:
                prefixes = self._prefixes[key_rank] = _cell_prefixes(record)
            cells = self.pairs[code] = _cells_json(record, prefixes, offsets, acts)
        cols = record.columns
        i = int(np.searchsorted(cols["position"], cols["position"].dtype.type(position)))  # (no cast of the array)
        grid = int(cols["grid"][i])
        cell = f"[{grid}, {int(cols['row'][i])}, {int(cols['col'][i])}]" if grid >= 0 else "null"
        lo, hi = max(0, i - self.context), min(len(cols["position"]), i + self.context + 1)
        dense = ["0.0"] * (hi - lo)
        a, b = np.searchsorted(offsets, np.asarray([lo, hi], offsets.dtype))  # (offsets ascend)
        for offset, v in zip(offsets[a:b].tolist(), f32_list(acts[a:b])):
            dense[offset - lo] = _number(v)
        ids = cols["token_id"][lo:hi].tolist()
        key = self.keys[key_rank]
        text = (f'{{"latent": {latent + self.first_latent}, "kind": "{kind}", "rank": {rank}, "key": {json.dumps(key)}, '
                f'"position": {position}, "activation": {_number(f32(value))}, '
                f'"token": {self.token(int(cols["token_id"][i]))}, "cell": {cell}, '
                f'"context": {{"first": {int(cols["position"][lo])}, '
                f'"positions": [{", ".join(map(str, cols["position"][lo:hi].tolist()))}], '
                f'"token_ids": [{", ".join(map(str, ids))}], "tokens": [{", ".join(map(self.token, ids))}], '
                f'"acts": [{", ".join(dense)}]}}')
        if interval is not None:
            text += f', "interval": {json.dumps(interval, allow_nan=False)}'
        return key, f'{text}, "cells": {cells}}}'


def _number(x: float | None) -> str:
    """A float as json.dumps writes it (None: null); NaN and infinities are refused, as there."""
    if x is None:
        return "null"
    if not np.isfinite(x):
        raise ValueError(f"Out of range float values are not JSON compliant: {x!r}")
    return float.__repr__(x)


def examples(fold, intervals: list, strings, context: int, keys: list[str],
             first_latent: int = 0) -> Iterator[tuple[str, str]]:
    """(key, JSON line) of every example of a fold's latents (features/fold.py), by latent, top
    before quantile, then rank. `intervals`: `quantile_intervals` of those latents; their lines
    are numbered from `first_latent`."""
    tg, _, _, tk2, tv = fold.top.items()
    dg, _, _, dk2, dv = fold.draws.items()
    q = fold.n_intervals
    d_lat, d_int = np.divmod(dg, q)
    # quantile examples: intervals from the top, then draw order (the smallest hashes first)
    d_order = np.lexsort((np.arange(len(dg)), -d_int, d_lat))
    d_lat, d_int, dk2, dv = d_lat[d_order], d_int[d_order], dk2[d_order], dv[d_order]
    t_bounds = np.searchsorted(tg, np.arange(fold.d_sae + 1))
    d_bounds = np.searchsorted(d_lat, np.arange(fold.d_sae + 1))
    writer = _ExampleWriter(fold, strings, context, keys, first_latent)
    tk2, tv, dk2, dv, d_int = tk2.tolist(), tv.tolist(), dk2.tolist(), dv.tolist(), d_int.tolist()
    for f in range(fold.d_sae):
        writer.pairs.clear()  # (examples of one latent share samples; another latent's never)
        if len(writer._prefixes) > 4096:  # (a sample's prefixes are reused across latents, up to a bound)
            writer._prefixes.clear()
        for rank, j in enumerate(range(t_bounds[f], t_bounds[f + 1])):
            yield writer.line(f, "top", rank, tk2[j], tv[j], None)
        by_index = {iv["index"]: iv for iv in (intervals[f] or {}).get("intervals", [])}
        for rank, j in enumerate(range(d_bounds[f], d_bounds[f + 1])):
            iv = by_index[d_int[j]]
            interval = {"index": iv["index"], "low": iv["low"], "high": iv["high"], "share": iv["share"]}
            yield writer.line(f, "quantile", rank, dk2[j], dv[j], interval)


def write_examples(path: Path, fold, intervals: list, strings, context: int, keys: list[str],
                   first_latent: int = 0) -> dict:
    """Write the examples of a fold's latents to `path`, one JSON line each; returns the
    `SampleRecord`s of the samples they come from, by key rank (for samples.jsonl)."""
    referenced = set()
    with open(path, "w", encoding="utf-8") as fh:
        for key, line in examples(fold, intervals, strings, context, keys, first_latent):
            referenced.add(key)
            fh.write(line + "\n")
    samples = fold.captures.samples
    return {rank: samples[rank] for rank in samples if keys[rank] in referenced}


def sample_line(record, prompt: dict) -> dict:
    info = record.info
    n_train = len(info["augmentation"]["train_order"])
    slots = prompt_slots(prompt["version"], n_train, bool(prompt.get("with_answer")))
    return {"key": info["key"], "task_id": info["task_id"], "test_index": int(info["test_index"]),
            "aug_index": int(info["key"].rsplit("/", 1)[1]), "augmentation": info["augmentation"],
            "prompt_tokens": int(info.get("prompt_tokens", 0)),
            "stored_tokens": int(info.get("stored_tokens", len(record.columns["position"]))),
            "first_position": int(record.columns["position"][0]), "grids": record.cells.grids_json(slots)}


def _row(f: int, arrays: dict, best, quantiles, logits, strings) -> dict:
    def share(name, k):
        v = arrays[name][f]
        return None if np.isnan(v).any() else (f32_list(v) if k is None else dict(zip(k, f32_list(v))))

    row = {"latent": f, "frequency": f32(arrays["frequency"][f]), "n_fires": int(arrays["n_fires"][f]),
           "mean_act": f32(arrays["mean_act"][f]), "max_act": f32(arrays["max_act"][f]),
           "cell_share": f32(arrays["cell_share"][f]), "grid_kind_share": share("grid_kind_share", GRID_KINDS),
           "colour_share": share("colour_share", None), "shown_colour_share": share("shown_colour_share", None),
           "row_share": share("row_share", None), "col_share": share("col_share", None),
           "border_share": f32(arrays["border_share"][f]),
           "role_specificity": f32(arrays["role_specificity"][f]),
           "colour_specificity": f32(arrays["colour_specificity"][f]),
           "shown_colour_specificity": f32(arrays["shown_colour_specificity"][f]),
           "consistency": f32(arrays["consistency"][f]), "consistency_cells": int(arrays["consistency_cells"][f]),
           "best_property": best[f], "quantiles": quantiles[f], "top_logits": None, "bottom_logits": None}
    if logits is not None:
        for side in ("top", "bottom"):
            ids = logits[f"{side}_logit_ids"][f]
            row[f"{side}_logits"] = [[s, v] for s, v in zip(strings(ids), f32_list(logits[f"{side}_logit_values"][f]))]
    return row


def write_fdir(out: Path, acc, *, header: dict, keys: list[str], prompt: dict, logits: dict | None,
               strings, context: int) -> None:
    """Write every file into FDIR.tmp-<pid>, then rename it to `out`."""
    from safetensors.numpy import save_file

    acc.sweep()
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        arrays = latent_arrays(acc)
        cov, f1 = coverage(acc)
        shown_cov, _ = coverage(acc, SHOWN_PROPERTIES)
        cov["shown"] = {"properties": shown_cov["properties"], "mean": shown_cov["mean"],
                        "threshold_index": shown_cov["threshold_index"]}
        best = best_properties(f1, acc)
        quantiles = quantile_intervals(acc)
        # (by the fold workers, each its own latents' lines, when the pass had them)
        records = acc.write_examples(tmp / "examples.jsonl", quantiles, strings, context, keys)
        with open(tmp / "samples.jsonl", "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(sample_line(records[rank], prompt), allow_nan=False) + "\n"
                          for rank in sorted(records))
        tensors = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        tensors["hist_edges"] = HIST_EDGES.copy()
        tensors["coverage_f1"] = f1.max(axis=1).astype(np.float32)  # [F, P]: at each latent's best threshold
        tensors["coverage_threshold"] = np.take_along_axis(  # [F, P]: that threshold
            thresholds(acc), np.argmax(f1, axis=1), axis=1).astype(np.float32)
        if logits is not None:
            tensors.update(logits)
        save_file(tensors, str(tmp / "latents.safetensors"),
                  metadata={"format": FORMAT, "version": str(VERSION),
                            "properties": json.dumps([p[0] for p in PROPERTIES])})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp / "latents.safetensors", 0o666 & ~umask)  # safetensors creates it private
        doc = dict(header)
        doc.update({"format": FORMAT, "version": VERSION,
                    "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "n_tokens": int(acc.n_tokens), "d_sae": int(acc.d_sae), "base_rates": base_rates(acc),
                    "latents": [_row(f, arrays, best, quantiles, logits, strings) for f in range(acc.d_sae)],
                    "coverage": cov})
        (tmp / "features.json").write_text(json.dumps(doc, allow_nan=False), encoding="utf-8")
        out.parent.mkdir(parents=True, exist_ok=True)
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
