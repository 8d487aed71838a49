"""The host side of the features pass: per-latent state of fixed size, updated batch by batch.

`Accumulator.update(batch, z, stats)` takes one batch's device results (features/device.py) and
folds them into float64/int64 sums, the histograms, the exact top-K, the quantile intervals and
their examples, consistency, and the activations that the kept examples will need
(`Captures`). Nothing here grows with the number of tokens (docs/FEATURES.md, "How it is
computed").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from arclens.features.batch import COLUMNS, Batch
from arclens.features.best import BestPerGroup
from arclens.features.consistency import Consistency, counts_of
from arclens.features.device import firing_pairs
from arclens.features.hashing import latent_hashes
from arclens.features.layout import N_ROLE_COLUMNS

HIST_EDGES = 10.0 ** np.linspace(-5, 5, 101)
N_HIST = len(HIST_EDGES) + 1
_NO_EXPONENT = np.iinfo(np.int64).min
GC_EVERY = 32  # batches between sweeps of activations no kept example needs any more


def hist_bins(values: np.ndarray) -> np.ndarray:
    """Histogram column of each (positive) activation: see `hist_counts` in docs/FEATURES.md."""
    return np.searchsorted(HIST_EDGES, np.asarray(values, np.float64), side="right")


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
        for i in np.unique(b_sample).tolist():  # per sample: its pairs, by latent then token
            s = batch.samples[i]
            lo, hi = np.searchsorted(token, [s.start, s.end])
            lat, order = latent[lo:hi], np.argsort(latent[lo:hi], kind="stable")
            lat_sorted, tok, val = lat[order], token[lo:hi][order] - s.start, value[lo:hi][order]
            mine = codes[b_sample == i]
            wanted = mine % f
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


def topk_pairs(latent, value) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The firing pairs of TopK codes ``(latent, value) [N, k]``, in token order."""
    latent, value = np.asarray(latent), np.asarray(value)
    tok, slot = np.nonzero(value > 0)
    return latent[tok, slot].astype(np.int32), tok.astype(np.int64), value[tok, slot]


def host_pairs(z) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    zh = np.asarray(z)
    tok, lat = np.nonzero(zh > 0)
    return lat.astype(np.int32), tok.astype(np.int64), zh[tok, lat]


def device_pairs(z, n_expected: int, cap: int) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], int]:
    """host_pairs by `firing_pairs` on the device, `cap` pairs per token at first, doubled until
    they fit (each new size compiles once); returns the pairs and the cap that fitted."""
    n_tokens = z.shape[0]
    while n_expected > max(1, cap * n_tokens):
        cap *= 2
    lat, tok, val, count = firing_pairs(z, max(1, cap * n_tokens))
    count = int(count)
    return (np.asarray(lat)[:count], np.asarray(tok)[:count].astype(np.int64), np.asarray(val)[:count]), cap


def _on_cpu(array) -> bool:
    devices = getattr(array, "devices", None)
    return devices is None or all(d.platform == "cpu" for d in devices())


class Accumulator:
    def __init__(self, d_sae: int, group_sizes, *, top_k: int, n_intervals: int, per_interval: int,
                 max_tokens: int | None = None):
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
        self.role_bins = np.zeros((f, n_intervals, N_ROLE_COLUMNS), np.int64 if wide else np.int32)
        self.role_tokens = np.zeros(N_ROLE_COLUMNS, np.int64)
        self.hist = np.zeros((f, N_HIST), np.int64)
        self.top = BestPerGroup(f, top_k, np.float64)
        self.draws = BestPerGroup(f * n_intervals, per_interval, np.int64)
        self.exponent = np.full(f, _NO_EXPONENT, np.int64)
        self.interval_counts = np.zeros((f, n_intervals), np.int64)
        self.consistency = Consistency(f, group_sizes)
        self.captures = Captures(f)
        self._pair_cap = 8
        self._batches = 0

    def pairs(self, z, n_expected: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The batch's firing pairs (latent, token, value), in token order. TopK codes
        ``(latent, value)`` already are the pairs. Dense ``z``: cut on the device on an
        accelerator, so that only they come back; on the CPU backend ``z`` already is host
        memory, and numpy's nonzero is ~20x faster than XLA's there."""
        if isinstance(z, tuple):
            return topk_pairs(*z)
        if _on_cpu(z):
            return host_pairs(z)
        pairs, self._pair_cap = device_pairs(z, n_expected, self._pair_cap)
        return pairs

    def update(self, batch: Batch, z, stats: dict) -> None:
        stats = {k: np.asarray(v) for k, v in stats.items()}
        self.n_tokens += int(batch.valid.sum())
        self.n_fires += stats["n_fires"]
        self.mass += stats["mass"]
        np.maximum(self.max, stats["max"], out=self.max)
        self.role_mass += stats["role_mass"]
        self.role_tokens += np.rint(stats["role_tokens"]).astype(np.int64)
        lat, tok, val = self.pairs(z, int(stats["n_fires"].sum()))
        f = self.d_sae
        self.hist += np.bincount(lat.astype(np.int64) * N_HIST + hist_bins(val),
                                 minlength=f * N_HIST).reshape(f, N_HIST)
        order = batch.order[tok]
        kept_top = self.top.offer(lat, -val.astype(np.float64), order, val)
        kept_draw = self._update_intervals(batch, stats["max"], lat, tok, val, order)
        self.captures.add(batch, lat, tok, val, np.union1d(kept_top, kept_draw))
        self.consistency.add_batch(batch, lat, tok)
        self._batches += 1
        if self._batches % GC_EVERY == 0:
            self.sweep()

    def _update_intervals(self, batch, batch_max, lat, tok, val, order) -> np.ndarray:
        q = self.n_intervals
        fired = batch_max > 0
        need = interval_exponent(batch_max)
        grow = fired & (need > self.exponent)
        regroup = grow & (self.exponent != _NO_EXPONENT)
        if regroup.any():  # the max crossed a power of two: merge intervals 2**s at a time
            latents = np.flatnonzero(regroup)
            shift = need[latents] - self.exponent[latents]
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
        interval = interval_index(val, self.exponent[lat], q)
        self.interval_counts += np.bincount(lat.astype(np.int64) * q + interval,
                                            minlength=self.d_sae * q).reshape(self.d_sae, q)
        cols = batch.role_cols[tok]
        on = cols >= 0
        if on.any():
            codes = ((lat.astype(np.int64) * q + interval)[:, None] * N_ROLE_COLUMNS + cols)[on]
            where, n = counts_of(codes)
            self.role_bins.reshape(-1)[where] += n
        hashes = latent_hashes(batch.token_hash[tok], lat)
        return self.draws.offer(lat.astype(np.int64) * q + interval, hashes, order, val)

    def live_codes(self) -> np.ndarray:
        g_top, _, _, k2_top, _ = self.top.items()
        g_draw, _, _, k2_draw, _ = self.draws.items()
        lat = np.concatenate([g_top, g_draw // self.n_intervals])
        rank = np.concatenate([k2_top, k2_draw]) >> np.int64(32)
        return rank * self.d_sae + lat

    def sweep(self) -> None:
        self.captures.keep_only(self.live_codes())
