"""The host side of the features pass: per-latent state of fixed size, updated batch by batch.

`Accumulator.update(batch, z, stats)` takes one batch's device results (features/device.py). The
counts that grow with the firing pairs (histogram, intervals, interval x role) are made on the
device (features/tally.py) or by the fold. Everything else per latent (sums, top-K, quantile
draws, consistency, the kept examples' activations) is a `LatentFold` (features/fold.py): one
here, or one per range of latents in worker processes (features/shards.py, ``fold_workers``).
Nothing here grows with the number of tokens (docs/FEATURES.md, "How it is computed").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from arclens.cores import usable_cores
from arclens.features import tally
from arclens.features.batch import Batch
from arclens.features.device import add_compensated, group_pairs, group_topk
from arclens.features.fold import (  # noqa: F401 (where tests and the writer find them)
    EDGES32,
    HIST_EDGES,
    N_HIST,
    NO_EXPONENT,
    LatentFold,
    hist_bins,
    interval_exponent,
    interval_index,
    merge_intervals,
)
from arclens.features.layout import N_ROLE_COLUMNS
from arclens.features.pairs import (
    OnDevice,
    RangePairs,
    cut_on_host,
    device_pairs,
    host_pairs,
    latent_ranges,
    part_of_latent,
    topk_pairs,
)

GC_EVERY = 32  # batches between sweeps of activations no kept example needs any more
MOVE_TALLIES_EVERY = 2**31  # token slots the device's int32 counts may take before they come here


TALLIES = ("auto", "device", "host")
PAIR_CUTS = ("auto", "device", "host")  # where the firing pairs are grouped by latent range


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


MAX_AUTO_FOLD_WORKERS = 16


def fold_workers_for(requested: int | None, d_sae: int, cores: int | None = None,
                     platform: str | None = None) -> int:
    """Worker processes for the fold: `requested`, or (None) on an accelerator every host core
    but four (the parent, the source's thread and its two copy threads), at least one per two
    cores, up to 16; none on the CPU backend, whose cores run the encoding. ``cores``: the cores
    this process may use (a container's, not the host's), ``platform``: JAX's (both found when
    None).

    At k = 32 each worker folds 32/N firing pairs a token at ~95-115 ns a pair, so by the
    estimate in docs/BENCHMARKS.md the workers are the host's slowest stage at 8 (~1.3-1.6x a
    plain read at d_model 896) and keep pace with the source at 12; never measured on an
    accelerator."""
    if requested is not None:
        return max(1, min(int(requested), d_sae))
    if (platform or jax.devices()[0].platform) == "cpu":
        return 1
    if cores is None:
        cores = usable_cores()
    return max(1, min(MAX_AUTO_FOLD_WORKERS, max(cores // 2, cores - 4), d_sae))


class Accumulator:
    def __init__(self, d_sae: int, group_sizes, *, top_k: int, n_intervals: int, per_interval: int,
                 max_tokens: int | None = None, tallies: str = "auto", fold_workers: int | None = 1,
                 pair_cut: str = "auto"):
        """``tallies``: where the per-pair counts (histogram, intervals, interval x role) are
        made: "device" (features/tally.py), "host" (numpy, in the fold), or "auto": the device
        unless it is the CPU, where numpy is faster (XLA's CPU scatter-add is not) and the
        result is the same. ``fold_workers``: processes folding a range of latents each (1: the
        fold runs here; None: `fold_workers_for`). ``pair_cut``: where the firing pairs are
        grouped by the workers' latent ranges (features/pairs.py): "device", "host", or "auto":
        the device when it tallies or the codes are on an accelerator. Every choice folds the
        same arrays."""
        if pair_cut not in PAIR_CUTS:
            raise ValueError(f"pair_cut must be one of {PAIR_CUTS}, not {pair_cut!r}")
        self.d_sae, self.n_intervals = d_sae, n_intervals
        self.n_tokens = 0
        self.role_tokens = np.zeros(N_ROLE_COLUMNS, np.int64)
        self.device_tallies = _use_device_tallies(tallies, d_sae, n_intervals)
        wide = max_tokens is None or max_tokens >= 2**31
        if self.device_tallies:  # the device's counts, added here when moved (the fold makes none)
            self._hist = np.zeros((d_sae, N_HIST), np.int64)
            self._interval_counts = np.zeros((d_sae, n_intervals), np.int64)
            self._role_bins = np.zeros((d_sae, n_intervals, N_ROLE_COLUMNS), np.int64 if wide else np.int32)
        self._tallies = None  # tally.Tallies on the device, when device_tallies
        self._role_mass = None  # (sum, compensation) float32 [F, R] on the device: `add_compensated`
        self._tallied_exponent = np.full(d_sae, NO_EXPONENT, np.int64)  # the interval grid of the host's counts
        self._tallied_tokens = 0  # token slots in the device's counts since they were moved here
        self._pair_cap = 8
        kwargs = {"group_sizes": group_sizes, "top_k": top_k, "n_intervals": n_intervals,
                  "per_interval": per_interval, "wide_counts": wide, "host_tallies": not self.device_tallies,
                  "gc_every": GC_EVERY}
        self.fold_workers = fold_workers_for(fold_workers, d_sae)
        self.ranges = latent_ranges(d_sae, self.fold_workers)
        self.pair_cut = pair_cut
        self._part_of = part_of_latent(self.ranges)
        self._parts_on_device = None  # (part_of, starts) as device arrays, for device.group_pairs
        self._workers = None
        self._latents = None
        self._ended = False  # (`finish` was called: the fold is whole)
        if self.fold_workers > 1:
            from arclens.features.shards import FoldWorkers

            self._workers = FoldWorkers(d_sae, self.fold_workers, kwargs)
        else:
            self._latents = LatentFold(d_sae, **kwargs)

    @property
    def latents(self) -> LatentFold:
        """The fold of every latent; with workers, it ends the pass (`finish`)."""
        self.finish()
        return self._latents

    def finish(self) -> None:
        """End the pass: bring the workers' folds back and put them together (a no-op without
        workers, and once done). The kept examples' activations stay with the workers, which
        write those examples' lines (`write_examples`)."""
        if self._workers is not None and not self._ended:
            self._latents = self._workers.collect()
        self._ended = True

    def write_examples(self, path, intervals: list, strings, context: int, keys: list[str]) -> dict:
        """examples.jsonl at `path` (features/output.py), by the workers in parallel, each its
        own latents' lines, when the pass had workers; returns the referenced samples' records."""
        self.finish()
        if self._workers is None:
            from arclens.features.output import write_examples

            return write_examples(path, self._latents, intervals, strings, context, keys)
        try:
            return self._workers.write_examples(path, intervals, strings, context, keys)
        finally:
            self.close()

    def close(self) -> None:
        """Stop the workers: after the examples are written, or if the pass ends early (an
        error, a stop)."""
        if self._workers is not None:
            self._workers.close()
            self._workers = None

    # the per-latent state, as the summary and the writer read it
    n_fires = property(lambda self: self.latents.n_fires)
    mass = property(lambda self: self.latents.mass)
    max = property(lambda self: self.latents.max)

    @property
    def role_mass(self) -> np.ndarray:
        """float64 [F, R]: each latent's activation mass by role column, over the pass (carried on
        the device, compensated, from each batch's float32 sums)."""
        if self._role_mass is None:
            return np.zeros((self.d_sae, N_ROLE_COLUMNS), np.float64)
        total, compensation = jax.device_get(self._role_mass)
        return total.astype(np.float64) + compensation.astype(np.float64)
    exponent = property(lambda self: self.latents.exponent)
    top = property(lambda self: self.latents.top)
    draws = property(lambda self: self.latents.draws)
    consistency = property(lambda self: self.latents.consistency)
    captures = property(lambda self: self.latents.captures)

    @property
    def hist(self) -> np.ndarray:
        return self._counts("_hist", "hist")

    @property
    def interval_counts(self) -> np.ndarray:
        return self._counts("_interval_counts", "interval_counts")

    @property
    def role_bins(self) -> np.ndarray:
        return self._counts("_role_bins", "role_bins")

    def _counts(self, mine: str, fold_name: str) -> np.ndarray:
        if self.device_tallies:
            self._move_tallies()
            return getattr(self, mine)
        return getattr(self.latents, fold_name)

    def update(self, batch: Batch, z, stats: dict) -> None:
        """Fold in one batch's device results (features/device.py: codes and stats)."""
        self.complete(self.dispatch(batch, z, stats))

    def dispatch(self, batch: Batch, z, stats: dict) -> tuple:
        """Start the device's part of a batch, without waiting for it: call right after
        `encode_batch`, in batch order, so that the device tallies and groups batch i while the
        host folds batch i-1. ``z``: TopK codes ``(latent, value) [N, k]`` (already the pairs,
        with the slots that do not fire) or dense codes ``[N, F]``. Returns what `complete`
        folds in: its last item waits for the batch's pairs (a `RangePairs`)."""
        on_device = self._cut_on_device(z)
        stats = self._carry_role_mass(stats)
        if isinstance(z, tuple):
            interval = self._tally_topk(batch, z, stats) if self.device_tallies else None
            if on_device:
                grouped = group_topk(*z, interval, *self._device_parts(), n_parts=len(self.ranges))
                return batch, stats, OnDevice(grouped, self.ranges)
            if interval is None:
                return batch, stats, lambda: self._cut(topk_pairs(*z), None)
            return batch, stats, lambda: self._cut(*topk_pairs(*z, interval))
        if not (on_device or self.device_tallies):  # dense codes in host memory, cut by numpy
            return batch, stats, lambda: self._cut(host_pairs(z), None)
        if _on_cpu(z):  # the pairs are cut in host memory and padded to a power of two (few shapes)
            pairs = host_pairs(z)
            count = len(pairs[0])
            pad = (1 << max(count - 1, 0).bit_length()) - count
            flat = tuple(np.pad(a, (0, pad)) for a in (pairs[0], pairs[1].astype(np.int32), pairs[2]))
        else:  # cut on the device, only they come back (sizing them waits for the batch's count)
            n_expected = int(np.asarray(stats["n_fires"]).sum())
            flat, count, self._pair_cap = device_pairs(z, n_expected, self._pair_cap)
            pairs = None
        interval = self._tally_pairs(batch, flat, count, stats) if self.device_tallies else None
        if on_device:
            grouped = group_pairs(*flat, interval, count, *self._device_parts(), n_parts=len(self.ranges))
            return batch, stats, OnDevice(grouped, self.ranges)

        def cut_here():
            got = pairs if pairs is not None else tuple(np.asarray(a)[:count] for a in flat)
            return self._cut(got, None if interval is None else np.asarray(interval)[:count])
        return batch, stats, cut_here

    def complete(self, dispatched: tuple) -> None:
        batch, stats, resolve = dispatched
        self.fold(batch, stats, resolve())

    def fold(self, batch: Batch, stats: dict, pairs: RangePairs) -> None:
        """The host's part of `update`: the batch's sums and its firing pairs grouped by this
        accumulator's latent ranges (features/pairs.py), with their intervals when the device
        tallied them (None: the counts by histogram column, interval and role are made by the
        fold too)."""
        if self._ended:
            raise RuntimeError("the features pass has ended: no batch can be folded in after `finish`")
        if pairs.ranges != self.ranges:
            raise ValueError(f"pairs grouped by {len(pairs.ranges)} latent ranges, the fold has {len(self.ranges)}")
        stats = {k: np.asarray(v) for k, v in stats.items() if k != "role_mass"}  # (carried on the device)
        self.n_tokens += int(batch.valid.sum())
        self.role_tokens += np.rint(stats["role_tokens"]).astype(np.int64)
        if self._workers is not None:
            self._workers.fold(batch, stats, pairs)
        else:
            self._latents.fold(batch, stats, *pairs.part(0))

    def _carry_role_mass(self, stats: dict) -> dict:
        """Add the batch's role masses into the device's carry; the rest of `stats` for the fold."""
        role_mass = stats["role_mass"]
        if self._role_mass is None:
            self._role_mass = (jnp.zeros_like(role_mass), jnp.zeros_like(role_mass))
        self._role_mass = add_compensated(self._role_mass, role_mass)
        return {k: v for k, v in stats.items() if k != "role_mass"}

    def _cut_on_device(self, z) -> bool:
        if self.pair_cut != "auto":
            return self.pair_cut == "device"
        return self.device_tallies or not _on_cpu(z[1] if isinstance(z, tuple) else z)

    def _cut(self, pairs, interval) -> RangePairs:
        return cut_on_host(pairs, interval, self.ranges, self._part_of)

    def _device_parts(self) -> tuple:
        if self._parts_on_device is None:
            self._parts_on_device = (jnp.asarray(self._part_of.astype(np.int32)),
                                     jnp.asarray(np.array([lo for lo, _ in self.ranges], np.int32)))
        return self._parts_on_device

    def _tallies_for(self, batch: Batch) -> tally.Tallies:
        """The device's counts, ready for this batch (moved here first if an int32 could wrap)."""
        if self._tallied_tokens + batch.size >= MOVE_TALLIES_EVERY:  # before any int32 count could wrap
            self._move_tallies()
        if self._tallies is None:  # on the grid the last move left (the device's, which runs ahead of folds)
            e = self._tallied_exponent
            self._tallies = tally.new_tallies(self.d_sae, N_HIST, self.n_intervals,
                                              np.where(e == NO_EXPONENT, tally.NO_EXPONENT, e))
        self._tallied_tokens += batch.size
        return self._tallies

    def _tally_topk(self, batch: Batch, codes, stats: dict):
        """Dispatch the counts by histogram column, interval and role of TopK codes [N, k] on the
        device (features/tally.py); returns the slots' intervals [N, k] (a device array)."""
        tallies = self._tallies_for(batch)
        self._tallies, interval = tally.tally_topk(tallies, *codes, jnp.asarray(batch.role_cols), stats["max"],
                                                   EDGES32, n_intervals=self.n_intervals)
        return interval

    def _tally_pairs(self, batch: Batch, flat, count: int, stats: dict):
        """The same for the first `count` of the padded flat pairs (latent, token, value)."""
        tallies = self._tallies_for(batch)
        self._tallies, interval = tally.tally_pairs(tallies, *flat, count, jnp.asarray(batch.role_cols),
                                                    stats["max"], EDGES32, n_intervals=self.n_intervals)
        return interval

    def _move_tallies(self) -> None:
        """Add the device's counts into the host's int64 ones (on the device's interval grid)."""
        if self._tallies is None:
            return
        t = jax.device_get(self._tallies)
        self._tallies, self._tallied_tokens = None, 0
        exponent = np.where(t.exponent == tally.NO_EXPONENT, NO_EXPONENT, t.exponent.astype(np.int64))
        had = self._tallied_exponent != NO_EXPONENT
        grew = np.flatnonzero(had & (exponent > self._tallied_exponent))
        if len(grew):
            shift = exponent[grew] - self._tallied_exponent[grew]
            self._interval_counts[grew] = merge_intervals(self._interval_counts[grew], shift)
            self._role_bins[grew] = merge_intervals(self._role_bins[grew], shift)
        self._tallied_exponent = exponent
        self._hist += t.hist
        self._interval_counts += t.interval_counts
        self._role_bins += t.role_bins

    def sweep(self) -> None:
        if self.latents.captures is not None:  # (with workers, each swept its own before finishing)
            self.latents.sweep()
