"""Length-bucketed batches: little padding, few compiled shapes, one global schedule.

The device cost of a batch is its padded size ``B * T``; every token beyond a prompt's length is
wasted work. Packing several prompts into one row would need segment ids in the forward pass, which
the model does not take, so we bucket instead:

1. **A ladder of lengths** (the ``T`` values that get compiled). It is chosen from the actual length
   histogram by dynamic programming: the ``max_shapes`` multiples of ``quantum`` that minimise the
   total padding when each prompt goes to the smallest ladder length that holds it. Rounding to the
   ladder is almost all of the padding; it shrinks about as 1/max_shapes (see DEFAULT_MAX_SHAPES).
   The job plans every window on its own (schedule.py), so a window's batches depend on its own
   samples only.
2. **Batches are contiguous runs of the prompts sorted by length, longest first.** A batch takes
   the length ``T`` of its longest prompt (rounded up the ladder) and ``B = budget // T`` rows
   (rounded down to a multiple of ``row_multiple``, the number of data-parallel replicas), so every
   batch costs about the same token budget. Filling a batch across a bucket boundary with shorter
   prompts wastes less than leaving its rows empty. ``B`` is a function of ``T``, so the number of
   compiled shapes is the ladder's length, plus one smaller ``B`` for the final remainder.
3. **Determinism.** The schedule is a pure function of the lengths and keys, with ties broken by
   key, so every process of a multi-host run computes the same global schedule and takes its own
   rows of each batch, and a resumed run the same batches as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_QUANTUM = 128  # T is a multiple of this: tile-friendly for matmuls and attention kernels
# Compiled lengths per window (``--max-shapes``): on the ARC-AGI-1 evaluation mix, 12 -> ~9.5%
# padding, 16 -> ~7.4%, 24 -> ~5.2%; each shape costs a compile (seconds on a GPU, done in parallel).
DEFAULT_MAX_SHAPES = 16


@dataclass(frozen=True)
class Batch:
    """One device batch: ``rows[i]`` is the index (into the scheduled list) of the sample in row i;
    rows past ``len(rows)`` are padding rows that carry no sample."""

    rows: tuple[int, ...]
    batch_size: int  # B, padded rows included
    seq_len: int  # T

    @property
    def shape(self) -> tuple[int, int]:
        return (self.batch_size, self.seq_len)


@dataclass(frozen=True)
class Schedule:
    batches: tuple[Batch, ...]
    ladder: tuple[int, ...]
    real_tokens: int
    padded_tokens: int  # sum of B * T over batches

    @property
    def padding_fraction(self) -> float:
        return 0.0 if not self.padded_tokens else 1.0 - self.real_tokens / self.padded_tokens

    @property
    def shapes(self) -> set[tuple[int, int]]:
        return {b.shape for b in self.batches}


def round_up(x: int, multiple: int) -> int:
    return -(-int(x) // multiple) * multiple


def choose_ladder(lengths: Sequence[int], max_shapes: int = DEFAULT_MAX_SHAPES, quantum: int = DEFAULT_QUANTUM) -> tuple[int, ...]:
    """The at most ``max_shapes`` multiples of ``quantum`` that minimise total padding.

    Exact dynamic programming over the distinct rounded-up lengths (at most a few hundred for
    any realistic prompt mix): ``best[k][j]`` = least padding covering candidates ``0..j`` with
    ``k`` ladder steps, the last one at candidate ``j``. The largest candidate is always a step,
    so every prompt fits.
    """
    if len(lengths) == 0:
        return ()
    lens = np.asarray(lengths, dtype=np.int64)
    if lens.min() < 1:
        raise ValueError("every prompt needs at least one token")
    rounded = (lens + quantum - 1) // quantum * quantum
    cands, inverse = np.unique(rounded, return_inverse=True)
    count = np.bincount(inverse, minlength=len(cands)).astype(np.int64)
    total_len = np.bincount(inverse, weights=lens, minlength=len(cands))
    n = len(cands)
    k_max = min(max_shapes, n)
    # Prefix sums let cost(i, j) = padding when candidates i..j all pad to cands[j] be O(1).
    c_count = np.concatenate([[0], np.cumsum(count)])
    c_len = np.concatenate([[0.0], np.cumsum(total_len)])

    def cost(i: int, j: int) -> float:
        return float(cands[j] * (c_count[j + 1] - c_count[i]) - (c_len[j + 1] - c_len[i]))

    inf = float("inf")
    best = [[inf] * n for _ in range(k_max + 1)]
    back = [[-1] * n for _ in range(k_max + 1)]
    for j in range(n):
        best[1][j] = cost(0, j)
    for k in range(2, k_max + 1):
        for j in range(k - 1, n):
            for i in range(k - 2, j):  # previous step at candidate i, this one covers i+1..j
                v = best[k - 1][i] + cost(i + 1, j)
                if v < best[k][j]:
                    best[k][j], back[k][j] = v, i
    k = min(range(1, k_max + 1), key=lambda kk: (best[kk][n - 1], kk))
    steps, j = [], n - 1
    while k >= 1 and j >= 0:
        steps.append(int(cands[j]))
        j = back[k][j]
        k -= 1
    return tuple(sorted(steps))


def rows_for(seq_len: int, tokens_per_batch: int, row_multiple: int = 1) -> int:
    """B for a length: the token budget's worth of rows, a multiple of ``row_multiple``, at least
    ``row_multiple`` (a prompt longer than the budget still runs, alone on its replica)."""
    b = max(1, tokens_per_batch // seq_len)
    return max(row_multiple, b // row_multiple * row_multiple)


def smallest_rows(count: int, full: int, row_multiple: int = 1) -> int:
    """B for the final, partial batch: the next power of two times ``row_multiple`` that holds
    ``count`` rows, capped at the full B (so the remainder adds at most one shape per length)."""
    b = row_multiple
    while b < count:
        b *= 2
    return min(b, full)


def plan_batches(
    lengths: Sequence[int],
    keys: Sequence[str] | None = None,
    *,
    tokens_per_batch: int,
    ladder: Sequence[int] | None = None,
    max_shapes: int = DEFAULT_MAX_SHAPES,
    quantum: int = DEFAULT_QUANTUM,
    row_multiple: int = 1,
) -> Schedule:
    """The global schedule for prompts of these lengths (see the module docstring).

    ``keys`` break ties between equal lengths so that the order never depends on input order
    quirks; with no keys, the index does.
    """
    n = len(lengths)
    if n == 0:
        return Schedule((), tuple(ladder or ()), 0, 0)
    if tokens_per_batch < 1:
        raise ValueError("tokens_per_batch must be positive")
    lens = [int(x) for x in lengths]
    ladder = tuple(sorted(ladder)) if ladder else choose_ladder(lens, max_shapes, quantum)
    if max(lens) > ladder[-1]:
        raise ValueError(f"a prompt of {max(lens)} tokens is longer than the ladder's top {ladder[-1]}")
    tie = keys if keys is not None else range(n)
    order = sorted(range(n), key=lambda i: (-lens[i], tie[i]))
    ladder_arr = np.asarray(ladder)

    batches, padded, pos = [], 0, 0
    while pos < n:
        seq_len = int(ladder_arr[np.searchsorted(ladder_arr, lens[order[pos]])])
        full = rows_for(seq_len, tokens_per_batch, row_multiple)
        rows = tuple(order[pos : pos + full])
        b = full if len(rows) == full else smallest_rows(len(rows), full, row_multiple)
        batches.append(Batch(rows, b, seq_len))
        padded += b * seq_len
        pos += len(rows)
    return Schedule(tuple(batches), ladder, sum(lens), padded)
