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
