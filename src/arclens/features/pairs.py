"""A batch's firing (latent, token) pairs as the host fold takes them: grouped by the latent
ranges of the fold's parts (one part, or one per worker process: features/shards.py), each part's
pairs in token order with its latents numbered from its range's start.

They are grouped where the codes are. On an accelerator the device does it (`device.group_pairs`,
a counting sort over a handful of keys) and the host only slices what comes back; there the host's
share of the pass is what bounds it (docs/BENCHMARKS.md). On the CPU backend the codes already are
host memory and numpy cuts them (`cut_on_host`), faster than XLA's CPU scatters on the same cores.
Both give the same arrays (tests/features/test_pairs.py).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np


def latent_ranges(d_sae: int, n_parts: int) -> list[tuple[int, int]]:
    """`n_parts` consecutive ranges of latents, as equal as may be."""
    cuts = np.linspace(0, d_sae, n_parts + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(cuts)]


def part_of_latent(ranges: list[tuple[int, int]]) -> np.ndarray:
    """latent -> the index of its range (uint8 for up to 256 parts: a radix sort's key)."""
    return np.repeat(np.arange(len(ranges), dtype=np.uint8 if len(ranges) <= 256 else np.uint16),
                     [hi - lo for lo, hi in ranges])


@dataclass(frozen=True)
class RangePairs:
    """The pairs of part i are ``[bounds[i], bounds[i+1])`` of the arrays: int32 latents (from the
    start of range i), int32 token slots, float32 values and, when the device tallied them, int32
    intervals (else None)."""

    ranges: list[tuple[int, int]]
    latent: np.ndarray
    token: np.ndarray
    value: np.ndarray
    interval: np.ndarray | None
    bounds: np.ndarray

    def part(self, i: int) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], np.ndarray | None]:
        """((latent, token, value), interval) of part i: what `LatentFold.fold` takes."""
        a, b = int(self.bounds[i]), int(self.bounds[i + 1])
        interval = None if self.interval is None else self.interval[a:b]
        return (self.latent[a:b], self.token[a:b], self.value[a:b]), interval

    @property
    def n_pairs(self) -> int:
        return int(self.bounds[-1])


def cut_on_host(pairs, interval, ranges: list[tuple[int, int]], part_of: np.ndarray | None = None) -> RangePairs:
    """Group pairs (latent, token, value; token order), and their intervals if any, by range."""
    lat, tok, val = pairs
    tok = tok.astype(np.int32, copy=False)  # (slots of a batch)
    if len(ranges) == 1:
        return RangePairs(ranges, lat, tok, val, interval, np.array([0, len(lat)], np.int64))
    part = (part_of_latent(ranges) if part_of is None else part_of)[lat]
    # (a stable sort of 8- or 16-bit keys is numpy's radix sort: each part keeps token order)
    order = np.argsort(part, kind="stable")
    bounds = np.r_[0, np.cumsum(np.bincount(part, minlength=len(ranges)))]
    starts = np.array([lo for lo, _ in ranges], np.int32)
    lat = lat[order] - np.repeat(starts, np.diff(bounds))
    interval = None if interval is None else interval[order]
    return RangePairs(ranges, lat, tok[order], val[order], interval, bounds)


@dataclass(frozen=True)
class OnDevice:
    """A batch's pairs as `device.group_pairs` leaves them, maybe still being computed: calling
    it waits for them and brings them to the host (the fold's one wait for the batch)."""

    grouped: tuple  # ((latent, token, value, interval or None) [P], counts [n_parts + 1]) on the device
    ranges: list[tuple[int, int]]

    def __call__(self) -> RangePairs:
        import jax

        (lat, tok, val, interval), counts = jax.device_get(self.grouped)
        bounds = np.r_[0, np.cumsum(counts[:len(self.ranges)], dtype=np.int64)]
        n = int(bounds[-1])
        return RangePairs(self.ranges, lat[:n], tok[:n], val[:n], None if interval is None else interval[:n], bounds)


def topk_pairs(latent, value, extra=None):
    """The firing pairs (latent, token, value) of TopK codes ``(latent, value) [N, k]``, in
    token order; with `extra` (another ``[N, k]``), also ``(pairs, extra's entries for them)``."""
    latent, value = np.asarray(latent), np.asarray(value)
    k = value.shape[1]
    at = np.flatnonzero(value.reshape(-1) > 0)  # (flat gathers: 4x faster than np.nonzero's 2-D ones)
    pairs = latent.reshape(-1)[at].astype(np.int32, copy=False), at // k, value.reshape(-1)[at]
    return pairs if extra is None else (pairs, np.asarray(extra).reshape(-1)[at])


def host_pairs(z) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The firing pairs of dense codes ``z [N, F]`` in host memory, in token order."""
    zh = np.asarray(z)
    at = np.flatnonzero(zh.reshape(-1) > 0)
    tok, lat = np.divmod(at, zh.shape[1])
    return lat.astype(np.int32), tok, zh.reshape(-1)[at]


def device_pairs(z, n_expected: int, cap: int):
    """The firing pairs of a dense ``z`` by `device.firing_pairs` on the device, `cap` pairs per
    token at first, doubled until they fit (each new size compiles once). Returns the padded
    device arrays (latent, token, value), the true count, and the cap that fitted."""
    from arclens.features.device import firing_pairs

    n_tokens = z.shape[0]
    while n_expected > max(1, cap * n_tokens):
        cap *= 2
    lat, tok, val, count = firing_pairs(z, max(1, cap * n_tokens))
    return (lat, tok, val), int(count), cap
