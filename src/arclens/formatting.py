"""How progress lines write rates and durations (extract's, infer's and the SAE trainer's: one
format everywhere). A top-level module: the pipeline and the sae package both print them, and
neither may import the other for it."""

from __future__ import annotations


def fmt_rate(x: float) -> str:
    """``12345.6`` -> ``"12.3k"``; below a thousand, whole numbers."""
    return f"{x / 1e3:,.1f}k" if x >= 1e3 else f"{x:,.0f}"


def fmt_eta(seconds: float | None) -> str:
    """Seconds as ``M:SS`` or ``H:MM:SS``; None (not known yet) as ``?``."""
    if seconds is None:
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60}:{rem % 60:02d}"
