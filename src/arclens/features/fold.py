"""The host's per-latent state of the features pass, for a range of latents, and how a batch's
firing pairs fold into it.

Every statistic of a latent depends on that latent's pairs alone: its sums, counts, top-K, quantile
draws, consistency, and the activations its kept examples need. So the latents can be split into
ranges, each folded by its own `LatentFold` (in another process: features/shards.py) from the
pairs of its latents, and the parts put back together end to end (`LatentFold.concat`) give what
one fold of every latent gives. A fold's latents are numbered from 0: the caller subtracts the
range's start.

Nothing here grows with the number of tokens (docs/FEATURES.md, "How it is computed").
"""

from __future__ import annotations

import numpy as np

from arclens.features.batch import Batch
from arclens.features.best import BestPerGroup
from arclens.features.captures import Captures
from arclens.features.consistency import Consistency
from arclens.features.hashing import latent_hashes
from arclens.features.layout import N_ROLE_COLUMNS
from arclens.features.tally import edges_up

HIST_EDGES = 10.0 ** np.linspace(-5, 5, 101)
N_HIST = len(HIST_EDGES) + 1
EDGES32 = edges_up(HIST_EDGES)  # the same columns from float32 comparisons (features/tally.py)
NO_EXPONENT = np.iinfo(np.int64).min


def hist_bins(values: np.ndarray) -> np.ndarray:
    """Histogram column of each (positive) float32 activation: the number of HIST_EDGES <= it
    (`hist_counts` in docs/FEATURES.md), searched among the edges rounded up to float32, which
    gives the same column for every float32 (tests/features/test_tallies.py) with no float64 copy."""
    return np.searchsorted(EDGES32, np.asarray(values, np.float32), side="right")


def interval_exponent(max_act: np.ndarray) -> np.ndarray:
    """e with 2**(e-1) <= max < 2**e: intervals are [j, j+1) * 2**e / Q (docs/FEATURES.md)."""
    _, e = np.frexp(np.asarray(max_act, np.float64))
    return e.astype(np.int64)


def interval_index(values: np.ndarray, exponent: np.ndarray, n_intervals: int) -> np.ndarray:
    """floor(value * Q / 2**e), exact in float64 for float32 values."""
    return np.floor(np.ldexp(np.asarray(values, np.float64) * n_intervals, -exponent)).astype(np.int64)


def merge_intervals(counts: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Counts per interval [L, Q, ...] after each row's interval width grew by 2**shift[row]:
    interval j of the old grid lies inside interval j >> shift of the new one."""
    merged = np.zeros_like(counts)
    q = counts.shape[1]
    for s in np.unique(shift):
        rows = np.flatnonzero(shift == s)
        target = np.arange(q) >> min(int(s), 62)
        for src in range(q):
            merged[rows, target[src]] += counts[rows, src]
    return merged


class LatentFold:
    def __init__(self, d_sae: int, group_sizes, *, top_k: int, n_intervals: int, per_interval: int,
                 first_latent: int = 0, wide_counts: bool = True, host_tallies: bool = True, gc_every: int = 32):
        """``host_tallies``: make the counts by histogram column, interval and role here (else
        the device makes them: features/tally.py, and `fold` is given each pair's interval).
        ``wide_counts``: int64 interval x role counts (int32 when no count can pass 2**31).
        ``gc_every``: batches between sweeps of the activations no kept example needs any more.
        ``first_latent``: the SAE's number of this fold's latent 0 (the quantile draw hashes it)."""
        f = self.d_sae = d_sae
        self.first_latent = first_latent
        self.top_k, self.n_intervals, self.per_interval = top_k, n_intervals, per_interval
        self.gc_every = gc_every
        self.n_fires = np.zeros(f, np.int64)
        self.mass = np.zeros(f, np.float64)
        self.max = np.zeros(f, np.float32)
        self.host_tallies = host_tallies
        if host_tallies:
            # firing tokens by (latent, activation interval, role column): coverage at every threshold
            # (int32 unless a count could pass 2**31: d_sae x Q x 126 x 4 bytes, 80 MB at 16k latents)
            self.role_bins = np.zeros((f, n_intervals, N_ROLE_COLUMNS), np.int64 if wide_counts else np.int32)
            self.hist = np.zeros((f, N_HIST), np.int64)
            self.interval_counts = np.zeros((f, n_intervals), np.int64)
        else:
            self.role_bins = self.hist = self.interval_counts = None
        self.top = BestPerGroup(f, top_k, np.float32)  # k1 = -activation, exact in float32
        self.draws = BestPerGroup(f * n_intervals, per_interval, np.int64)
        self.exponent = np.full(f, NO_EXPONENT, np.int64)
        self.consistency = Consistency(f, group_sizes)
        self.captures = Captures(f)
        self._batches = 0

    def fold(self, batch: Batch, stats: dict, pairs, interval) -> None:
        """One batch: its per-latent sums (`stats`: n_fires, mass, max, for these
        latents) and its firing pairs (latent, token, value; token order), with their intervals
        when the device tallied them (None: the counts are made here)."""
        self.n_fires += stats["n_fires"]
        self.mass += stats["mass"]
        np.maximum(self.max, stats["max"], out=self.max)
        lat, tok, val = pairs
        if interval is None:
            flat = self.hist.reshape(-1)
            np.add.at(flat, lat.astype(np.int64) * N_HIST + hist_bins(val), flat.dtype.type(1))
        near = np.flatnonzero(val >= -self.top.bars()[lat])  # only these can enter a top-K
        kept_top = near[self.top.offer(lat[near], -val[near].astype(np.float32), batch.order[tok[near]], val[near])]
        kept_draw = self._update_intervals(batch, stats["max"], lat, tok, val, interval)
        self.captures.add(batch, lat, tok, val, np.union1d(kept_top, kept_draw))
        self.consistency.add_batch(batch, lat, tok)
        self._batches += 1
        if self._batches % self.gc_every == 0:
            self.sweep()

    def _update_intervals(self, batch, batch_max, lat, tok, val, interval) -> np.ndarray:
        """The interval grids, the quantile draws, and (unless the device tallied them, which
        gives `interval`) the counts by interval and role."""
        q = self.n_intervals
        fired = batch_max > 0
        need = interval_exponent(batch_max)
        grow = fired & (need > self.exponent)
        regroup = grow & (self.exponent != NO_EXPONENT)
        if regroup.any():  # the max crossed a power of two: merge intervals 2**s at a time
            latents = np.flatnonzero(regroup)
            shift = need[latents] - self.exponent[latents]
            if interval is None:  # (the device's counts are merged there, and where they are moved)
                self.interval_counts[latents] = merge_intervals(self.interval_counts[latents], shift)
                self.role_bins[latents] = merge_intervals(self.role_bins[latents], shift)
            j = np.arange(q)
            groups = (latents[:, None] * q + j[None, :]).ravel()
            g, k1, k2, v = self.draws.take(groups)
            f_of, old_j = np.divmod(g, q)
            s_of = (need - self.exponent)[f_of]
            self.draws.offer(f_of * q + (old_j >> np.minimum(s_of, 62)), k1, k2, v)
        self.exponent[grow] = need[grow]
        if not len(lat):
            return np.zeros(0, np.int64)
        if interval is None:
            interval = interval_index(val, self.exponent[lat], q)
            # (np.add.at is numpy >= 2's fast scatter-add, faster here than a sort or a bincount,
            # given a scalar of the array's own dtype)
            flat = self.interval_counts.reshape(-1)
            np.add.at(flat, lat.astype(np.int64) * q + interval, flat.dtype.type(1))
            cols = batch.role_cols[tok]
            on = cols >= 0
            if on.any():
                index = np.int32 if self.role_bins.size < 2**31 else np.int64  # half the traffic
                codes = (((lat.astype(index) * q + interval.astype(index)) * N_ROLE_COLUMNS)[:, None] + cols)[on]
                flat = self.role_bins.reshape(-1)
                np.add.at(flat, codes, flat.dtype.type(1))
        groups = lat.astype(np.int64) * q + interval
        hashes = latent_hashes(batch.token_hash[tok], lat + np.int32(self.first_latent))
        near = np.flatnonzero(hashes <= self.draws.bars()[groups])  # only these can be drawn
        return near[self.draws.offer(groups[near], hashes[near], batch.order[tok[near]], val[near])]

    def live_codes(self) -> np.ndarray:
        g_top, _, _, k2_top, _ = self.top.items()
        g_draw, _, _, k2_draw, _ = self.draws.items()
        lat = np.concatenate([g_top, g_draw // self.n_intervals])
        rank = np.concatenate([k2_top, k2_draw]) >> np.int64(32)
        return rank * self.d_sae + lat

    def sweep(self) -> None:
        self.captures.keep_only(self.live_codes())

    @classmethod
    def concat(cls, parts: list[LatentFold]) -> LatentFold:
        """The fold of latents [0, sum of the parts' d_sae) from the folds of consecutive ranges,
        but for the kept examples' activations (`captures` is None): the parts write those lines."""
        first = parts[0]
        whole = cls.__new__(cls)
        whole.d_sae, whole.first_latent = sum(p.d_sae for p in parts), first.first_latent
        whole.top_k, whole.n_intervals, whole.per_interval = first.top_k, first.n_intervals, first.per_interval
        whole.gc_every, whole.host_tallies, whole._batches = first.gc_every, first.host_tallies, first._batches
        names = ["n_fires", "mass", "max", "exponent"]
        names += ["hist", "interval_counts", "role_bins"] if first.host_tallies else []
        for name in names:
            setattr(whole, name, np.concatenate([getattr(p, name) for p in parts]))
        if not first.host_tallies:
            whole.hist = whole.interval_counts = whole.role_bins = None
        whole.top = BestPerGroup.concat([p.top for p in parts])
        whole.draws = BestPerGroup.concat([p.draws for p in parts])  # (groups are latent * Q + j)
        whole.consistency = Consistency.concat([p.consistency for p in parts])
        whole.captures = None  # (each part keeps its kept examples' activations, and writes their lines)
        return whole
