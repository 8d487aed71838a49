"""The `cells` of an example (features/output.py) for a sample whose cells are one token each and
for one whose cells are several tokens (RepeatNumberEncoder): every cell the latent fires on,
once, with its largest activation, written as JSON that parses back to the float32 values."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from arclens.features.output import _cell_prefixes, _cells_json


@settings(max_examples=100, deadline=None)
@given(data=st.data(), multi=st.booleans())
def test_cells_are_every_fired_cell_once_with_its_largest_activation(data, multi):
    cells = [(-1, -1, -1)] + [(g, r, c) for g in range(2) for r in range(3) for c in range(2)]
    n_tokens = data.draw(st.integers(1, 40 if multi else len(cells)))
    pick = data.draw(st.lists(st.integers(0, len(cells) - 1), min_size=n_tokens, max_size=n_tokens,
                              unique=not multi))  # (one token per cell unless multi)
    grid, row, col = (np.asarray([cells[i][k] for i in pick], np.int16) for k in range(3))
    record = SimpleNamespace(columns={"grid": grid, "row": row, "col": col}, multi_token_cells=multi)
    offsets = np.asarray(sorted(data.draw(st.sets(st.integers(0, n_tokens - 1)))), np.int32)
    acts = np.asarray(data.draw(st.lists(st.sampled_from([0.5, 1.25, 3.0, 1e-05, 123456.79]),
                                         min_size=len(offsets), max_size=len(offsets))), np.float32)
    got = json.loads(_cells_json(record, _cell_prefixes(record), offsets, acts))
    best: dict[tuple, float] = {}
    for t, a in zip(offsets.tolist(), acts.tolist()):
        key = (int(grid[t]), int(row[t]), int(col[t]))
        if key[0] >= 0:
            best[key] = max(best.get(key, 0.0), a)
    assert sorted((g, r, c) for g, r, c, _ in got) == sorted(best)  # each fired cell once
    assert all(np.float32(v) == np.float32(best[(g, r, c)]) for g, r, c, v in got)
    if not multi:  # in token order
        assert [tuple(e[:3]) for e in got] == [(int(grid[t]), int(row[t]), int(col[t])) for t in offsets.tolist()
                                               if grid[t] >= 0]


# values whose float32 and JSON forms differ in every way json.dumps can write a float
_VALUES = [1e16, 1e-05, 1e8, 1e-45, 3.4028235e38, 0.1, 123456.79, 1.0, 2.5e-8, 16777217.0, 1e-38, 9.999999e-6, 1e22]
_TOKENS = ['"', "\\", "é", "日本", "\x00", "\x1f", "\u2028", "\n", " ", "", "\U0001f600", "a'b", "\t\r", None]


def _reference_line(record, key, strings, context, latent, kind, rank, position, value, interval, offsets, acts, cells):
    """The line as the writer made it before it wrote text itself: json.dumps of the dict."""
    from arclens.features.output import f32, f32_list

    cols = record.columns
    i = int(np.searchsorted(cols["position"], position))
    grid, row, col = int(cols["grid"][i]), int(cols["row"][i]), int(cols["col"][i])
    lo, hi = max(0, i - context), min(len(cols["position"]), i + context + 1)
    dense = np.zeros(hi - lo, np.float32)
    sel = (offsets >= lo) & (offsets < hi)
    dense[offsets[sel] - lo] = acts[sel]
    ids = cols["token_id"][lo:hi]
    d = {"latent": latent, "kind": kind, "rank": rank, "key": key, "position": position,
         "activation": f32(value), "token": strings([cols["token_id"][i]])[0],
         "cell": [grid, row, col] if grid >= 0 else None,
         "context": {"first": int(cols["position"][lo]), "positions": cols["position"][lo:hi].tolist(),
                     "token_ids": ids.tolist(), "tokens": strings(ids), "acts": f32_list(dense)}}
    if interval is not None:
        d["interval"] = interval
    return f'{json.dumps(d, allow_nan=False)[:-1]}, "cells": {cells}}}'


@settings(max_examples=150, deadline=None)
@given(data=st.data(), n=st.integers(1, 24), context=st.integers(0, 4), first_latent=st.integers(0, 3))
def test_an_example_line_is_what_json_dumps_of_its_fields_writes(data, n, context, first_latent):
    from arclens.features.captures import Captures, SampleRecord
    from arclens.features.output import _ExampleWriter

    grid = np.asarray(data.draw(st.lists(st.integers(-1, 2), min_size=n, max_size=n)), np.int16)
    cols = {"position": np.arange(5, 5 + n, dtype=np.int64) * 2,
            "token_id": np.asarray(data.draw(st.lists(st.integers(0, len(_TOKENS) - 1), min_size=n, max_size=n)),
                                   np.int32),
            "grid": grid, "row": np.where(grid < 0, -1, 1).astype(np.int16), "col": np.where(grid < 0, -1, 0).astype(np.int16)}
    record = SampleRecord({"key": 'task"é\\/0'}, cols, None, data.draw(st.booleans()))
    captures = Captures(2)
    captures.samples[3] = record
    offsets = np.asarray(sorted(data.draw(st.sets(st.integers(0, n - 1), min_size=1))), np.int32)
    acts = np.asarray(data.draw(st.lists(st.sampled_from(_VALUES), min_size=len(offsets), max_size=len(offsets))),
                      np.float32)
    captures.entries[3 * 2 + 1] = (captures._new_block(offsets, acts), 0, len(offsets))
    none = data.draw(st.booleans())
    strings = (lambda ids: [None] * len(ids)) if none else (lambda ids: [_TOKENS[i] for i in np.asarray(ids).tolist()])
    fold = SimpleNamespace(captures=captures, d_sae=2)
    keys = ["a", "b", "c", 'task"é\\/0']
    writer = _ExampleWriter(fold, strings, context, keys, first_latent)
    t = data.draw(st.sampled_from(offsets.tolist()))
    position, value = int(cols["position"][t]), float(acts[offsets.tolist().index(t)])
    interval = data.draw(st.none() | st.builds(lambda j, lo, s: {"index": j, "low": lo, "high": 2 * lo, "share": s},
                                               st.integers(0, 9), st.sampled_from(_VALUES), st.sampled_from([0.1, 1 / 3, 0.0])))
    key, line = writer.line(1, "quantile" if interval else "top", 2, (3 << 32) | position, value, interval)
    cells = _cells_json(record, _cell_prefixes(record), offsets, acts)
    assert key == keys[3]
    assert line == _reference_line(record, key, strings, context, 1 + first_latent, "quantile" if interval else "top",
                                   2, position, value, interval, offsets, acts, cells)
