"""One copy split between threads: each thread copies a span of the pieces laid end to end.

A large copy out of (or into) a memory map is bound by each thread's page walks, not by the
memory, so the store source and the fold workers' ring both split theirs in two
(docs/BENCHMARKS.md).
"""

from __future__ import annotations

import numpy as np


def copy_span(pieces: list[tuple[np.ndarray, np.ndarray]], lo: int, hi: int) -> None:
    """Rows [lo, hi) of `pieces` laid end to end, each (destination, source) of equal length."""
    start = 0
    for dst, src in pieces:
        end = start + len(src)
        if end > lo and start < hi:
            a, b = max(lo, start) - start, min(hi, end) - start
            dst[a:b] = src[a:b]
        start = end
