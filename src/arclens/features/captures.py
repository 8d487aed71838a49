"""The activations an example's lines will need, kept while its token is among the kept ones.

When a token enters a latent's top-K or a quantile draw (features/accumulate.py), the latent's
activations on the token's whole sample are kept (the example's `cells` and `context` in
examples.jsonl), with what the lines need of the sample; `Accumulator.sweep` drops those no kept
token needs any more.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from arclens.features.batch import COLUMNS, Batch


@dataclass
class SampleRecord:
    """What an example's lines need of its sample: its table entry and per-token columns."""

    info: dict
    columns: dict[str, np.ndarray]
    cells: object  # SampleCells
    multi_token_cells: bool


class Captures:
    """The latent's activations on the sample of every kept example, keyed by (key rank, latent)."""

    def __init__(self, d_sae: int):
        self.d_sae = d_sae
        self.acts: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # rank * F + latent -> (offsets, values)
        self.samples: dict[int, SampleRecord] = {}

    def add(self, batch: Batch, latent: np.ndarray, token: np.ndarray, value: np.ndarray,
            kept: np.ndarray) -> None:
        """Keep the activations of (sample, latent) for the pairs `kept` (indices into the pairs,
        which are in token order)."""
        if not len(kept):
            return
        f = self.d_sae
        b_sample = batch.sample_of[token[kept]].astype(np.int64)
        ranks = np.asarray([s.rank for s in batch.samples], np.int64)[b_sample]
        codes, first = np.unique(ranks * f + latent[kept], return_index=True)
        new = np.asarray([c not in self.acts for c in codes.tolist()], bool)
        if not new.any():
            return
        codes, b_sample = codes[new], b_sample[first[new]]
        wanted_lut = np.zeros(f, bool)
        for i in np.unique(b_sample).tolist():  # per sample: the wanted latents' pairs, by latent then token
            s = batch.samples[i]
            lo, hi = np.searchsorted(token, [s.start, s.end])
            mine = codes[b_sample == i]
            wanted = mine % f
            wanted_lut[wanted] = True  # (sorting only their pairs: a sample has ~k x its tokens)
            sel = lo + np.flatnonzero(wanted_lut[latent[lo:hi]])
            wanted_lut[wanted] = False
            order = sel[np.argsort(latent[sel], kind="stable")]
            lat_sorted, tok, val = latent[order], token[order] - s.start, value[order]
            a, b = np.searchsorted(lat_sorted, wanted), np.searchsorted(lat_sorted, wanted, side="right")
            for c, x, y in zip(mine.tolist(), a.tolist(), b.tolist()):
                self.acts[c] = (tok[x:y].astype(np.int32), val[x:y].astype(np.float32))
            if s.rank not in self.samples:
                self.samples[s.rank] = SampleRecord(dict(s.info), {k: np.array(s.columns[k]) for k in COLUMNS},
                                                    s.cells, s.multi_token_cells)

    def keep_only(self, live_codes: np.ndarray) -> None:
        live = set(np.asarray(live_codes, np.int64).tolist())
        for c in [c for c in self.acts if c not in live]:
            del self.acts[c]
        ranks = {c // self.d_sae for c in live}
        for r in [r for r in self.samples if r not in ranks]:
            del self.samples[r]
