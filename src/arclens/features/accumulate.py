"""The host side of the features pass: per-latent state of fixed size, updated batch by batch.

`Accumulator.update(batch, z, stats)` takes one batch's device results (features/device.py) and
folds them into float64/int64 sums, the histograms, the exact top-K, the quantile intervals and
their examples, consistency, and the activations that the kept examples will need
(features/captures.py). The counts that grow with the firing pairs are made on the device or
here (features/tally.py). Nothing here grows with the number of tokens (docs/FEATURES.md, "How it is
computed").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from arclens.features import tally
from arclens.features.batch import Batch
from arclens.features.best import BestPerGroup
from arclens.features.captures import Captures
from arclens.features.consistency import Consistency
from arclens.features.device import firing_pairs
from arclens.features.hashing import latent_hashes
from arclens.features.layout import N_ROLE_COLUMNS

HIST_EDGES = 10.0 ** np.linspace(-5, 5, 101)
N_HIST = len(HIST_EDGES) + 1
EDGES32 = tally.edges_up(HIST_EDGES)  # the same columns from float32 comparisons (features/tally.py)
_NO_EXPONENT = np.iinfo(np.int64).min
GC_EVERY = 32  # batches between sweeps of activations no kept example needs any more
MOVE_TALLIES_EVERY = 2**31  # token slots the device's int32 counts may take before they come here


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


def topk_pairs(latent, value, extra=None):
    """The firing pairs (latent, token, value) of TopK codes ``(latent, value) [N, k]``, in
    token order; with `extra` (another ``[N, k]``), also ``(pairs, extra's entries for them)``."""
    latent, value = np.asarray(latent), np.asarray(value)
    tok, slot = np.nonzero(value > 0)
    pairs = latent[tok, slot].astype(np.int32), tok.astype(np.int64), value[tok, slot]
    return pairs if extra is None else (pairs, np.asarray(extra)[tok, slot])


def host_pairs(z) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    zh = np.asarray(z)
    tok, lat = np.nonzero(zh > 0)
    return lat.astype(np.int32), tok.astype(np.int64), zh[tok, lat]


def device_pairs(z, n_expected: int, cap: int):
    """The firing pairs of a dense ``z`` by `firing_pairs` on the device, `cap` pairs per token
    at first, doubled until they fit (each new size compiles once). Returns the padded device
    arrays (latent, token, value), the true count, and the cap that fitted."""
    n_tokens = z.shape[0]
    while n_expected > max(1, cap * n_tokens):
        cap *= 2
    lat, tok, val, count = firing_pairs(z, max(1, cap * n_tokens))
    return (lat, tok, val), int(count), cap


TALLIES = ("auto", "device", "host")


def _use_device_tallies(tallies: str, d_sae: int, n_intervals: int) -> bool:
    """"auto": the device, unless it is the CPU (numpy's add.at beats XLA's CPU scatter-add, on
    the same cores), or the counts would take more than a quarter of its memory (twice
    `d_sae x Q x 126` int32 at a merge), or Q is too large for the integer interval."""
    if tallies not in TALLIES:
        raise ValueError(f"tallies must be one of {TALLIES}, not {tallies!r}")
    if tallies == "device" and n_intervals >= tally.MAX_QUANTILES:
        raise ValueError(f"device tallies need fewer than {tally.MAX_QUANTILES} quantile intervals")
    if tallies != "auto":
        return tallies == "device"
    device = jax.devices()[0]
    if device.platform == "cpu" or n_intervals >= tally.MAX_QUANTILES:
        return False
    try:
        limit = (device.memory_stats() or {}).get("bytes_limit")
    except (NotImplementedError, RuntimeError):  # a backend that keeps no memory statistics
        limit = None
    return limit is None or 2 * tally.device_bytes(d_sae, N_HIST, n_intervals) <= limit / 4


def _on_cpu(array) -> bool:
    devices = getattr(array, "devices", None)
    return devices is None or all(d.platform == "cpu" for d in devices())


class Accumulator:
    def __init__(self, d_sae: int, group_sizes, *, top_k: int, n_intervals: int, per_interval: int,
                 max_tokens: int | None = None, tallies: str = "auto"):
        """``tallies``: where the per-pair counts (histogram, intervals, interval x role) are
        made: "device" (features/tally.py), "host" (numpy, here), or "auto": the device unless
        it is the CPU, where numpy is faster (XLA's CPU scatter-add is not) and the result is
        the same."""
        f = self.d_sae = d_sae
        self.top_k, self.n_intervals, self.per_interval = top_k, n_intervals, per_interval
        self.n_tokens = 0
        self.n_fires = np.zeros(f, np.int64)
        self.mass = np.zeros(f, np.float64)
        self.max = np.zeros(f, np.float32)
        self.role_mass = np.zeros((f, N_ROLE_COLUMNS), np.float64)
        # firing tokens by (latent, activation interval, role column): coverage at every threshold
        # (int32 unless a count could pass 2**31: d_sae x Q x 126 x 4 bytes, 80 MB at 16k latents)
        wide = max_tokens is None or max_tokens >= 2**31
        self._role_bins = np.zeros((f, n_intervals, N_ROLE_COLUMNS), np.int64 if wide else np.int32)
        self.role_tokens = np.zeros(N_ROLE_COLUMNS, np.int64)
        self._hist = np.zeros((f, N_HIST), np.int64)
        self.top = BestPerGroup(f, top_k, np.float32)  # k1 = -activation, exact in float32
        self.draws = BestPerGroup(f * n_intervals, per_interval, np.int64)
        self.exponent = np.full(f, _NO_EXPONENT, np.int64)
        self._interval_counts = np.zeros((f, n_intervals), np.int64)
        self.device_tallies = _use_device_tallies(tallies, d_sae, n_intervals)
        self._tallies = None  # tally.Tallies on the device, when device_tallies
        self._tallied_exponent = self.exponent.copy()  # the interval grid of the host's counts
        self._tallied_tokens = 0  # token slots in the device's counts since they were moved here
        self.consistency = Consistency(f, group_sizes)
        self.captures = Captures(f)
        self._pair_cap = 8
        self._batches = 0

    @property
    def hist(self) -> np.ndarray:
        self._move_tallies()
        return self._hist

    @property
    def interval_counts(self) -> np.ndarray:
        self._move_tallies()
        return self._interval_counts

    @property
    def role_bins(self) -> np.ndarray:
        self._move_tallies()
        return self._role_bins

    def pairs(self, z, n_expected: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The batch's firing pairs (latent, token, value), in token order. TopK codes
        ``(latent, value)`` already are the pairs. Dense ``z``: cut on the device on an
        accelerator, so that only they come back; on the CPU backend ``z`` already is host
        memory, and numpy's nonzero is ~20x faster than XLA's there."""
        if isinstance(z, tuple):
            return topk_pairs(*z)
        if _on_cpu(z):
            return host_pairs(z)
        (lat, tok, val), count, self._pair_cap = device_pairs(z, n_expected, self._pair_cap)
        return np.asarray(lat)[:count], np.asarray(tok)[:count].astype(np.int64), np.asarray(val)[:count]

    def update(self, batch: Batch, z, stats: dict) -> None:
        """Fold in one batch's device results (features/device.py: codes and stats)."""
        self.complete(self.dispatch(batch, z, stats))

    def dispatch(self, batch: Batch, z, stats: dict) -> tuple:
        """Start the device's part of a batch, without waiting for it: call right after
        `encode_batch`, in batch order, so that the device tallies batch i while the host folds
        batch i-1. Returns what `complete` folds in."""
        if self.device_tallies:
            return batch, stats, self._tally_on_device(batch, z, stats)
        return batch, stats, lambda: (self.pairs(z, int(np.asarray(stats["n_fires"]).sum())), None)

    def complete(self, dispatched: tuple) -> None:
        batch, stats, resolve = dispatched
        self.fold(batch, stats, *resolve())

    def fold(self, batch: Batch, stats: dict, pairs, interval) -> None:
        """The host's part of `update`: the batch's sums and its firing pairs (latent, token,
        value; token order), with their intervals when the device tallied them (None: the
        counts by histogram column, interval and role are made here too)."""
        stats = {k: np.asarray(v) for k, v in stats.items()}
        self.n_tokens += int(batch.valid.sum())
        self.n_fires += stats["n_fires"]
        self.mass += stats["mass"]
        np.maximum(self.max, stats["max"], out=self.max)
        self.role_mass += stats["role_mass"]
        self.role_tokens += np.rint(stats["role_tokens"]).astype(np.int64)
        lat, tok, val = pairs
        if interval is None:
            flat = self._hist.reshape(-1)
            np.add.at(flat, lat.astype(np.int64) * N_HIST + hist_bins(val), flat.dtype.type(1))
        near = np.flatnonzero(val >= -self.top.bars()[lat])  # only these can enter a top-K
        kept_top = near[self.top.offer(lat[near], -val[near].astype(np.float32), batch.order[tok[near]], val[near])]
        kept_draw = self._update_intervals(batch, stats["max"], lat, tok, val, interval)
        self.captures.add(batch, lat, tok, val, np.union1d(kept_top, kept_draw))
        self.consistency.add_batch(batch, lat, tok)
        self._batches += 1
        if self._batches % GC_EVERY == 0:
            self.sweep()

    def _update_intervals(self, batch, batch_max, lat, tok, val, interval) -> np.ndarray:
        """The interval grids, the quantile draws, and (unless the device tallied them, which
        gives `interval`) the counts by interval and role."""
        q = self.n_intervals
        fired = batch_max > 0
        need = interval_exponent(batch_max)
        grow = fired & (need > self.exponent)
        regroup = grow & (self.exponent != _NO_EXPONENT)
        if regroup.any():  # the max crossed a power of two: merge intervals 2**s at a time
            latents = np.flatnonzero(regroup)
            shift = need[latents] - self.exponent[latents]
            if interval is None:  # (the device's counts are merged there, and here when moved)
                self._interval_counts[latents] = merge_intervals(self._interval_counts[latents], shift)
                self._role_bins[latents] = merge_intervals(self._role_bins[latents], shift)
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
            flat = self._interval_counts.reshape(-1)
            np.add.at(flat, lat.astype(np.int64) * q + interval, flat.dtype.type(1))
            cols = batch.role_cols[tok]
            on = cols >= 0
            if on.any():
                index = np.int32 if self._role_bins.size < 2**31 else np.int64  # half the traffic
                codes = (((lat.astype(index) * q + interval.astype(index)) * N_ROLE_COLUMNS)[:, None] + cols)[on]
                flat = self._role_bins.reshape(-1)
                np.add.at(flat, codes, flat.dtype.type(1))
        groups = lat.astype(np.int64) * q + interval
        hashes = latent_hashes(batch.token_hash[tok], lat)
        near = np.flatnonzero(hashes <= self.draws.bars()[groups])  # only these can be drawn
        return near[self.draws.offer(groups[near], hashes[near], batch.order[tok[near]], val[near])]

    def _tally_on_device(self, batch: Batch, z, stats: dict):
        """Dispatch the batch's counts by histogram column, interval and role on the device
        (features/tally.py). Returns a function that waits for them and gives the firing pairs
        (token order) and their intervals, for `fold`."""
        if self._tallied_tokens + batch.size >= MOVE_TALLIES_EVERY:  # before any int32 count could wrap
            self._move_tallies()
        if self._tallies is None:  # on the grid the last move left (the device's, which runs ahead of folds)
            e = self._tallied_exponent
            self._tallies = tally.new_tallies(self.d_sae, N_HIST, self.n_intervals,
                                              np.where(e == _NO_EXPONENT, tally.NO_EXPONENT, e))
        self._tallied_tokens += batch.size
        role_cols, q, device_max = jnp.asarray(batch.role_cols), self.n_intervals, stats["max"]
        if isinstance(z, tuple):  # TopK codes [N, k]: the pairs are their firing slots; nothing waits here
            self._tallies, interval = tally.tally_topk(self._tallies, *z, role_cols, device_max, EDGES32,
                                                       n_intervals=q)
            return lambda: topk_pairs(*z, interval)
        if _on_cpu(z):  # the pairs are cut in host memory and padded to a power of two (few shapes)
            pairs = host_pairs(z)
            count = len(pairs[0])
            pad = (1 << max(count - 1, 0).bit_length()) - count
            lat_d, tok_d, val_d = (np.pad(a, (0, pad)) for a in (pairs[0], pairs[1].astype(np.int32), pairs[2]))
        else:  # cut on the device, only they come back (sizing them waits for the batch's count)
            n_expected = int(np.asarray(stats["n_fires"]).sum())
            (lat_d, tok_d, val_d), count, self._pair_cap = device_pairs(z, n_expected, self._pair_cap)
            pairs = None
        self._tallies, interval = tally.tally_pairs(self._tallies, lat_d, tok_d, val_d, count, role_cols,
                                                    device_max, EDGES32, n_intervals=q)

        def resolve():
            if pairs is not None:
                return pairs, np.asarray(interval)[:count]
            got = np.asarray(lat_d)[:count], np.asarray(tok_d)[:count].astype(np.int64), np.asarray(val_d)[:count]
            return got, np.asarray(interval)[:count]
        return resolve

    def _move_tallies(self) -> None:
        """Add the device's counts into the host's int64 ones (on the device's interval grid)."""
        if self._tallies is None:
            return
        t = jax.device_get(self._tallies)
        self._tallies, self._tallied_tokens = None, 0
        exponent = np.where(t.exponent == tally.NO_EXPONENT, _NO_EXPONENT, t.exponent.astype(np.int64))
        had = self._tallied_exponent != _NO_EXPONENT
        grew = np.flatnonzero(had & (exponent > self._tallied_exponent))
        if len(grew):
            shift = exponent[grew] - self._tallied_exponent[grew]
            self._interval_counts[grew] = merge_intervals(self._interval_counts[grew], shift)
            self._role_bins[grew] = merge_intervals(self._role_bins[grew], shift)
        self._tallied_exponent = exponent
        self._hist += t.hist
        self._interval_counts += t.interval_counts
        self._role_bins += t.role_bins

    def live_codes(self) -> np.ndarray:
        g_top, _, _, k2_top, _ = self.top.items()
        g_draw, _, _, k2_draw, _ = self.draws.items()
        lat = np.concatenate([g_top, g_draw // self.n_intervals])
        rank = np.concatenate([k2_top, k2_draw]) >> np.int64(32)
        return rank * self.d_sae + lat

    def sweep(self) -> None:
        self.captures.keep_only(self.live_codes())
