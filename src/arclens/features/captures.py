"""The activations an example's lines will need, kept while its token is among the kept ones.

When a token enters a latent's top-K or a quantile draw (features/accumulate.py), the latent's
activations on the token's whole sample are kept (the example's `cells` and `context` in
examples.jsonl), with what the lines need of the sample; `Accumulator.sweep` drops those no kept
token needs any more.
"""

from __future__ import annotations

import itertools
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
    """The latent's activations on the sample of every kept example, keyed by (key rank, latent).

    A sample's wanted activations are one block (token offsets and values, by latent then token);
    each kept (sample, latent) points at its slice of a block, an entry made at C speed (the
    pass keeps ~100k of them a second while young). A sweep drops the blocks no entry points at
    and copies out the slices of blocks that are mostly dead, so memory follows the kept ones."""

    def __init__(self, d_sae: int):
        self.d_sae = d_sae
        self.entries: dict[int, tuple[int, int, int]] = {}  # rank * F + latent -> (block, start, stop)
        self.blocks: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # block -> (offsets int32, values float32)
        self.samples: dict[int, SampleRecord] = {}
        self._next_block = 0

    def acts(self, code: int) -> tuple[np.ndarray, np.ndarray]:
        """(token offsets in the sample, activations) of a kept (rank * F + latent)."""
        block, start, stop = self.entries[code]
        offsets, values = self.blocks[block]
        return offsets[start:stop], values[start:stop]

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
        new = np.fromiter(map(self.entries.__contains__, codes.tolist()), bool, len(codes)) ^ True
        if not new.any():
            return
        codes, b_sample = codes[new], b_sample[first[new]]
        wanted_lut = np.zeros(f, bool)
        narrow = np.uint16 if f <= 2**16 else np.int32  # (numpy's stable sort of 16-bit ints is a radix sort)
        # (#: a searchsorted whose values are of another dtype than the sorted array casts the whole
        # array first, 0.6 ms for a batch's million pairs, once per sample: the values are cast)
        for i in np.unique(b_sample).tolist():  # per sample: the wanted latents' pairs, by latent then token
            s = batch.samples[i]
            lo, hi = np.searchsorted(token, np.asarray([s.start, s.end], token.dtype))  # (#)
            mine = codes[b_sample == i]
            wanted = mine % f
            wanted_lut[wanted] = True  # (sorting only their pairs: a sample has ~k x its tokens)
            sel = lo + np.flatnonzero(wanted_lut[latent[lo:hi]])
            wanted_lut[wanted] = False
            order = sel[np.argsort(latent[sel].astype(narrow), kind="stable")]
            lat_sorted = latent[order]
            block = self._new_block((token[order] - s.start).astype(np.int32),
                                    value[order].astype(np.float32, copy=False))
            wanted = wanted.astype(lat_sorted.dtype)
            a, b = np.searchsorted(lat_sorted, wanted), np.searchsorted(lat_sorted, wanted, side="right")
            self.entries.update(zip(mine.tolist(), zip(itertools.repeat(block), a.tolist(), b.tolist())))
            if s.rank not in self.samples:
                self.samples[s.rank] = SampleRecord(dict(s.info), {k: np.array(s.columns[k]) for k in COLUMNS},
                                                    s.cells, s.multi_token_cells)

    def _new_block(self, offsets: np.ndarray, values: np.ndarray) -> int:
        self.blocks[self._next_block] = (offsets, values)
        self._next_block += 1
        return self._next_block - 1

    def keep_only(self, live_codes: np.ndarray) -> None:
        live = set(np.asarray(live_codes, np.int64).tolist())
        for c in [c for c in self.entries if c not in live]:
            del self.entries[c]
        used: dict[int, int] = {}
        for block, start, stop in self.entries.values():
            used[block] = used.get(block, 0) + stop - start
        for block in [b for b in self.blocks if b not in used]:
            del self.blocks[block]
        sparse: dict[int, list] = {b: [] for b, n in used.items() if 2 * n < len(self.blocks[b][0])}
        for code, (block, start, stop) in self.entries.items():
            if block in sparse:
                sparse[block].append((code, start, stop))
        for block, kept in sparse.items():  # a mostly dead block: its live slices, copied into a new one
            offsets, values = self.blocks.pop(block)
            parts = [np.arange(start, stop) for _, start, stop in kept]
            sizes = np.cumsum([0] + [len(p) for p in parts])
            where = np.concatenate(parts)
            new = self._new_block(offsets[where], values[where])
            for (code, _, _), a, b in zip(kept, sizes[:-1].tolist(), sizes[1:].tolist()):
                self.entries[code] = (new, a, b)
        ranks = {c // self.d_sae for c in live}
        for r in [r for r in self.samples if r not in ranks]:
            del self.samples[r]
