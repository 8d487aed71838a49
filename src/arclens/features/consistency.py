"""Augmentation consistency, streamed: for each latent, over the original cells it fires on at
least once and that are seen under at least two augmentations, the mean share of those
augmentations in which it fires on the cell (docs/FEATURES.md).

A (task, test index) is one group: its samples are the augmentations. The firing (cell, latent)
pairs of a group are kept until its last sample has been seen (the number of samples of every
group is known up front), then reduced into two ``[F]`` sums and dropped.
"""

from __future__ import annotations

import numpy as np

# A group's cells x latents are counted in a bitmap up to 64 MB, and while it has no more than
# 16 bits a pair: clearing and summing a bit costs ~1/20 of sorting a pair (2 cores, numpy 2.4).
_BITMAP_CELLS = 1 << 26
_BITS_PER_PAIR = 16


class Consistency:
    def __init__(self, d_sae: int, group_sizes: np.ndarray):
        self.d_sae = d_sae
        self.group_sizes = np.asarray(group_sizes, np.int64)
        self.seen = np.zeros(len(self.group_sizes), np.int64)
        self.fired: dict[int, list[np.ndarray]] = {}
        self.cells: dict[int, list[np.ndarray]] = {}
        self.share_sum = np.zeros(d_sae, np.float64)
        self.n_cells = np.zeros(d_sae, np.int64)

    def add_batch(self, batch, latent: np.ndarray, token: np.ndarray) -> None:
        """The firing pairs of one batch (latent, token index; in token order), for every sample."""
        # (the bounds in the pairs' own dtype: else searchsorted casts every pair's token first)
        bounds = np.searchsorted(token, np.asarray([(s.start, s.end) for s in batch.samples], token.dtype)) \
            if batch.samples else []
        # int32 codes while they fit: the gathers at each group's close take half the time
        index = np.int32 if (int(batch.cell.max(initial=0)) + 1) * self.d_sae < 2**31 else np.int64
        f = index(self.d_sae)
        for s, (lo, hi) in zip(batch.samples, bounds):
            tok = token[lo:hi]
            cell = batch.cell[tok]
            on_cell = cell >= 0
            code = cell[on_cell].astype(index) * f + latent[lo:hi][on_cell].astype(index)
            if s.multi_token_cells:  # a cell shown as several tokens fires once per sample
                code = np.unique(code)
            self.add_sample(s.group, s.unique_cells, code)

    def add_sample(self, group: int, cells: np.ndarray, fired: np.ndarray) -> None:
        """`cells`: the original cells the sample shows; `fired`: cell * d_sae + latent, once each."""
        self.fired.setdefault(group, []).append(fired)
        self.cells.setdefault(group, []).append(cells)
        self.seen[group] += 1
        if self.seen[group] >= self.group_sizes[group]:
            self._close(group)

    def _close(self, group: int) -> None:
        # consistency sums, per latent, k_c / n_c over the cells c it fires on (k_c of the group's
        # n_c samples that show c). A sample's pairs are each (cell, latent) once, so the sum of
        # k_c over the cells of one n_c is a count of pairs: no sort of the pairs to find each k_c.
        # Only the number of cells per latent needs each (cell, latent) once, which a bitmap of
        # the group's cells x latents gives (a sort where that would be large).
        fired = np.concatenate(self.fired.pop(group))
        cells = np.concatenate(self.cells.pop(group))
        if not len(fired):
            return
        seen_cells, n = counts_of(cells)
        keep = n >= 2  # (only cells seen under at least two augmentations count)
        seen_cells, n = seen_cells[keep], n[keep]
        if not len(seen_cells):
            return
        f = self.d_sae
        cell, latent = np.divmod(fired, fired.dtype.type(f))
        dense_of = np.full(int(max(seen_cells[-1], cell.max())) + 1, -1, np.int64)  # (cell codes are < grids x 900)
        dense_of[seen_cells] = np.arange(len(seen_cells))
        dense = dense_of[cell]
        if not (dense >= 0).all():
            on = dense >= 0
            dense, latent = dense[on], latent[on]
        # k_c summed per latent and value of n_c (a group has a few), then divided once: a latent
        # that fires on a cell in all n_c samples adds exactly 1, as k_c / n_c does (a sum of k_c
        # terms 1 / n_c would not: nine of 1/9 make 1.0000000000000002; a reviewer's find).
        n_values, n_class = np.unique(n, return_inverse=True)
        j = len(n_values)
        k_sum = np.bincount(latent.astype(np.int64) * j + n_class[dense], minlength=f * j).reshape(f, j)
        self.share_sum += (k_sum / n_values).sum(1)
        bits = len(seen_cells) * f
        if bits <= _BITMAP_CELLS and bits <= _BITS_PER_PAIR * len(latent):
            fires = np.zeros(bits, bool)
            fires[dense * f + latent] = True
            self.n_cells += fires.reshape(len(seen_cells), f).sum(0)
        else:  # (a bitmap mostly empty: each (cell, latent) once by a sort)
            codes, _ = counts_of(dense * f + latent)
            self.n_cells += np.bincount(codes % f, minlength=f)

    def close_all(self) -> None:
        """Close the groups still open: those with samples the source never delivered."""
        for group in list(self.fired):
            self._close(group)

    @classmethod
    def concat(cls, parts: list[Consistency]) -> Consistency:
        """The latents of every part, one part after another (each part's groups are closed)."""
        whole = cls(sum(p.d_sae for p in parts), parts[0].group_sizes)
        for p in parts:
            p.close_all()
        whole.seen = parts[0].seen.copy()
        whole.share_sum = np.concatenate([p.share_sum for p in parts])
        whole.n_cells = np.concatenate([p.n_cells for p in parts])
        return whole

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """(consistency [F] with NaN where no cell qualifies, number of cells [F])."""
        self.close_all()
        with np.errstate(invalid="ignore", divide="ignore"):
            value = np.where(self.n_cells > 0, self.share_sum / self.n_cells, np.nan)
        return value, self.n_cells.copy()


def counts_of(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(x, return_counts=True) by one sort (numpy's hash-based unique is slower here)."""
    x = np.sort(x)
    if not len(x):
        return x, np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, x[1:] != x[:-1]])
    return x[starts], np.diff(np.r_[starts, len(x)])
