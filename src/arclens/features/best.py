"""The best few items of many groups, kept exactly while items stream past.

An item has a group, a primary key ``k1``, a secondary key ``k2`` (both "smaller is better") and
a float payload. `BestPerGroup` keeps, for each group, the ``cap`` items that come first in the
order (k1, k2), with every offer handled as whole numpy arrays: an offer first drops the items
that cannot beat their group's current last one, then sorts only the groups that changed. The
top-K examples of every latent are the groups = latents, k1 = -activation, k2 = the token's
(key rank, position) ordinal; the quantile examples are the groups = (latent, interval),
k1 = a hash, k2 = the same ordinal. Keeping a group's best items of a union equals keeping the
best of the best of each part, which is what makes both exact in one streaming pass.

The sort an offer makes is one unstable argsort of a 64-bit key, (group, the top 32 bits of k1 in
an order-keeping integer form), which numpy sorts with SIMD ~15x faster than a three-key lexsort;
the few items whose keys tie are then ordered by (k1, k2) in full, so the order stays exact.
"""

from __future__ import annotations

import numpy as np

_K2_NONE = np.iinfo(np.int64).max


class BestPerGroup:
    def __init__(self, n_groups: int, cap: int, k1_dtype=np.float64):
        if n_groups >= 2**32:  # (exact_order keeps a group in 32 bits)
            raise ValueError(f"BestPerGroup holds fewer than 2**32 groups, not {n_groups}")
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
        touched = present(g, len(self.n))
        have = self.n[touched]
        slot = np.arange(self.cap)
        mask = slot[None, :] < have[:, None]
        eg = np.broadcast_to(touched[:, None], mask.shape)[mask]
        all_g = np.concatenate([eg, g])
        all_1 = np.concatenate([self.k1[touched][mask], a])
        all_2 = np.concatenate([self.k2[touched][mask], b])
        all_v = np.concatenate([self.val[touched][mask], v])
        source = np.concatenate([np.full(len(eg), -1, np.int64), idx])
        order = exact_order(all_g, all_1, all_2)
        all_g, all_1, all_2, all_v, source = all_g[order], all_1[order], all_2[order], all_v[order], source[order]
        rank = rank_in_group(all_g)
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

    @classmethod
    def concat(cls, parts: list[BestPerGroup]) -> BestPerGroup:
        """The groups of every part, one part after another."""
        whole = cls(0, parts[0].cap, parts[0].k1_dtype)
        for name in ("k1", "k2", "val", "n"):
            setattr(whole, name, np.concatenate([getattr(p, name) for p in parts]))
        return whole

    def items(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every kept item as (group, slot, k1, k2, val), by group then slot (best first)."""
        mask = np.arange(self.cap)[None, :] < self.n[:, None]
        groups, slots = np.nonzero(mask)
        return groups, slots, self.k1[mask], self.k2[mask], self.val[mask]


def present(groups: np.ndarray, n_groups: int) -> np.ndarray:
    """np.unique(groups) for ids in [0, n_groups), by a mask instead of a sort."""
    seen = np.zeros(n_groups, bool)
    seen[groups] = True
    return np.flatnonzero(seen)


def rank_in_group(sorted_groups: np.ndarray) -> np.ndarray:
    """Each item's place within its run of equal (sorted) groups: 0, 1, 2, ..."""
    n = len(sorted_groups)
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]]) if n else np.zeros(0, np.int64)
    return np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))


def ordered_bits(k1: np.ndarray) -> np.ndarray:
    """uint64 with the order of k1 (float32/float64/int64): equal keys give equal bits (-0.0
    is +0.0 here, as it compares equal). A float32's bits are all in the top half."""
    if k1.dtype == np.float32:  # all 32 bits in the top half: ties there are exact ties
        narrow = (k1 + np.float32(0)).view(np.uint32)
        negative = (narrow >> np.uint32(31)).astype(bool)
        return np.where(negative, ~narrow, narrow | np.uint32(1 << 31)).astype(np.uint64) << np.uint64(32)
    if k1.dtype.kind == "f":
        wide = (k1.astype(np.float64) + 0.0).view(np.uint64)  # (+ 0.0 turns -0.0 into +0.0)
        negative = (wide >> np.uint64(63)).astype(bool)
        return np.where(negative, ~wide, wide | np.uint64(1 << 63))
    return k1.astype(np.int64).view(np.uint64) ^ np.uint64(1 << 63)


def exact_order(groups: np.ndarray, k1: np.ndarray, k2: np.ndarray) -> np.ndarray:
    """np.lexsort((k2, k1, groups)) for groups in [0, 2**32) and k2 distinct within a group (as
    a token's ordinal is), by one argsort of (group << 32 | top half of k1's ordered bits); the
    items whose keys tie there are then put in (k1, k2) order among themselves."""
    bits = ordered_bits(k1)
    key = (groups.astype(np.uint64) << np.uint64(32)) | (bits >> np.uint64(32))
    order = np.argsort(key)
    ranked = key[order]
    tie = ranked[1:] == ranked[:-1]
    if tie.any():
        at = np.flatnonzero(np.r_[tie, False] | np.r_[False, tie])  # places held by tied items
        members = order[at]
        # (runs of one key hold consecutive places, so sorting the members by (key, k1, k2)
        # and putting them back in those places orders each run and nothing else)
        if k1.dtype == np.float32:  # the key holds k1 whole: order by (run, k2's rank), one more argsort
            run = np.cumsum(np.r_[True, ranked[at][1:] != ranked[at][:-1]]).astype(np.uint64)
            k2_rank = np.empty(len(members), np.uint64)
            k2_rank[np.argsort(k2[members])] = np.arange(len(members), dtype=np.uint64)  # (k2 are distinct in a group)
            order[at] = members[np.argsort((run << np.uint64(32)) | k2_rank)]
        else:  # (ties of the top half alone: rare)
            order[at] = members[np.lexsort((k2[members], bits[members], ranked[at]))]
    return order
