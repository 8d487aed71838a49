"""Opt-in legacy export for consumers of the seed system's pickled shards. UNSAFE to load.

Layout of OUT (documented in docs/STORE.md):

- ``OUT/metadata.json``: the store's metadata plus ``"export"``:
  ``{"format": "arclens-pickle-export", "version": 1, "source": DEST, "layout": ...}``.
- ``OUT/shard_<i:06d>.pkl.gz``: one per committed store shard, in index-file order; a gzipped
  pickle (protocol 4) of a ``list`` with one ``dict`` per sample: ``key``, ``task_id``,
  ``test_index``, ``augmentation``, ``prompt_tokens``, ``stored_tokens``, ``activations``
  (``{hook: float32 ndarray [n, d_model]}``), and ``position``, ``token_id``, ``grid``, ``row``,
  ``col`` (int ndarrays ``[n]``). Activations are float32 so that loading needs numpy only.

Pickle executes code when loaded: arclens writes these files, and never reads them.
"""

from __future__ import annotations

import gzip
import io
import json
import pickle

import numpy as np

from arclens.errors import UserError
from arclens.store import fs as fsx
from arclens.store.format import COLUMNS, METADATA_FILE, encode_json

EXPORT_FORMAT = "arclens-pickle-export"
LAYOUT = ("shard_<i:06d>.pkl.gz: gzip(pickle(list of per-sample dicts: key, task_id, test_index, "
          "augmentation, prompt_tokens, stored_tokens, activations={hook: float32[n, d_model]}, "
          "position, token_id, grid, row, col)))")


def export(dest: str, out: str) -> int:
    from arclens.store.reader import open_store

    store = open_store(dest)
    ofs, oroot = fsx.get_fs(out)
    if fsx.exists(ofs, fsx.join(oroot, METADATA_FILE)):
        raise UserError(f"{out}: already holds an export ({METADATA_FILE} exists); choose an empty OUT")
    for i, view in enumerate(store.shards):
        arrays = view.file.read(store.hooks + [c for c in COLUMNS if c != "sample"])
        table = view.sample_table()
        records = []
        for row, start, end in view.token_ranges():
            rec = dict(table[row])
            rec["activations"] = {h: np.asarray(arrays[h][start:end], dtype=np.float32) for h in store.hooks}
            for c in COLUMNS:
                if c != "sample":
                    rec[c] = np.array(arrays[c][start:end])
            records.append(rec)
        buf = io.BytesIO()
        with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
            pickle.dump(records, gz, protocol=4)
        fsx.write_whole(ofs, fsx.join(oroot, f"shard_{i:06d}.pkl.gz"), buf.getvalue())
    meta = dict(store.metadata)
    meta["export"] = {"format": EXPORT_FORMAT, "version": 1, "source": dest, "shards": len(store.shards),
                      "samples": store.n_samples, "tokens": store.n_tokens, "layout": LAYOUT,
                      "warning": "pickle runs arbitrary code when loaded; load only from trusted places"}
    # Written last: an export without metadata.json is incomplete.
    fsx.write_whole(ofs, fsx.join(oroot, METADATA_FILE), encode_json(json.loads(json.dumps(meta))))
    return len(store.shards)
