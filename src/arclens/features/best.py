"""The best few items of many groups, kept exactly while items stream past.

An item has a group, a primary key ``k1``, a secondary key ``k2`` (both "smaller is better") and
a float payload. `BestPerGroup` keeps, for each group, the ``cap`` items that come first in the
order (k1, k2), with every offer handled as whole numpy arrays: an offer first drops the items
that cannot beat their group's current last one, then sorts only the groups that changed. The
top-K examples of every latent are the groups = latents, k1 = -activation, k2 = the token's
(key rank, position) ordinal; the quantile examples are the groups = (latent, interval),
k1 = a hash, k2 = the same ordinal. Keeping a group's best items of a union equals keeping the
best of the best of each part, which is what makes both exact in one streaming pass.
"""

from __future__ import annotations

import numpy as np

_K2_NONE = np.iinfo(np.int64).max


class BestPerGroup:
    def __init__(self, n_groups: int, cap: int, k1_dtype=np.float64):
        self.cap = int(cap)
        self.k1_dtype = np.dtype(k1_dtype)
        none1 = np.inf if self.k1_dtype.kind == "f" else np.iinfo(self.k1_dtype).max
        self._none1 = none1
        self.k1 = np.full((n_groups, self.cap), none1, self.k1_dtype)
        self.k2 = np.full((n_groups, self.cap), _K2_NONE, np.int64)
        self.val = np.zeros((n_groups, self.cap), np.float32)
        self.n = np.zeros(n_groups, np.int64)  # filled slots; slots [0, n) hold the items in order

    def offer(self, groups, k1, k2, val) -> np.ndarray:
        """Offer items; returns the indices (into the offered arrays) of those now kept."""
        groups = np.asarray(groups, np.int64)
        k1 = np.asarray(k1, self.k1_dtype)
        k2 = np.asarray(k2, np.int64)
        if len(groups) == 0:
            return np.zeros(0, np.int64)
        last = self.cap - 1
        full = self.n[groups] >= self.cap
        w1, w2 = self.k1[groups, last], self.k2[groups, last]
        passing = ~full | (k1 < w1) | ((k1 == w1) & (k2 < w2))
        idx = np.flatnonzero(passing)
        if len(idx) == 0:
            return idx
        g, a, b, v = groups[idx], k1[idx], k2[idx], np.asarray(val, np.float32)[idx]
        touched = np.unique(g)
        have = self.n[touched]
        slot = np.arange(self.cap)
        mask = slot[None, :] < have[:, None]
        eg = np.broadcast_to(touched[:, None], mask.shape)[mask]
        all_g = np.concatenate([eg, g])
        all_1 = np.concatenate([self.k1[touched][mask], a])
        all_2 = np.concatenate([self.k2[touched][mask], b])
        all_v = np.concatenate([self.val[touched][mask], v])
        source = np.concatenate([np.full(len(eg), -1, np.int64), idx])
        order = np.lexsort((all_2, all_1, all_g))
        all_g, all_1, all_2, all_v, source = all_g[order], all_1[order], all_2[order], all_v[order], source[order]
        first = np.searchsorted(all_g, all_g, side="left")
        rank = np.arange(len(all_g)) - first
        keep = rank < self.cap
        self.k1[touched] = self._none1
        self.k2[touched] = _K2_NONE
        self.val[touched] = 0
        kg, kr = all_g[keep], rank[keep]
        self.k1[kg, kr], self.k2[kg, kr], self.val[kg, kr] = all_1[keep], all_2[keep], all_v[keep]
        self.n[touched] = np.minimum(np.bincount(all_g, minlength=len(self.n))[touched], self.cap)
        entered = source[keep]
        return np.sort(entered[entered >= 0])

    def bars(self) -> np.ndarray:
        """[n_groups]: the k1 an item must reach (<=) to have a chance to enter its group: the last
        kept item's, or "none" (above any real k1) while the group has room. A cheap prefilter
        for `offer`, which decides exactly."""
        return self.k1[:, self.cap - 1].copy()

    def take(self, groups) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Remove and return every item of `groups` as (group, k1, k2, val)."""
        groups = np.unique(np.asarray(groups, np.int64))
        mask = np.arange(self.cap)[None, :] < self.n[groups][:, None]
        out = (np.broadcast_to(groups[:, None], mask.shape)[mask], self.k1[groups][mask],
               self.k2[groups][mask], self.val[groups][mask])
        self.k1[groups], self.k2[groups], self.val[groups], self.n[groups] = self._none1, _K2_NONE, 0, 0
        return out

    def items(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every kept item as (group, slot, k1, k2, val), by group then slot (best first)."""
        mask = np.arange(self.cap)[None, :] < self.n[:, None]
        groups, slots = np.nonzero(mask)
        return groups, slots, self.k1[mask], self.k2[mask], self.val[mask]
