"""Test seam: make the process signal itself at a named point, to test resume after `kill -9`.

``ARCLENS_TEST_CRASH_AT="NAME[:N][=SIG]"`` sends signal SIG (default KILL; e.g. ``=TERM`` to test
the graceful stop at a known point) to the process itself the N-th time (default 1st) it reaches
the point called NAME. Unset (always, outside tests), ``crash_point`` is one environment lookup.
The points are called by the code itself (nothing is monkeypatched), from whichever thread
reaches them, so the background shard publisher is exercised as it runs by default:

- ``batch-dispatched`` (pipeline/stages.py): a batch is on the device and nothing of it is written
- ``sample-added`` (pipeline/writing.py): the writer has buffered a sample of the open shard
- ``shard-writing`` (store/format.py ``write_shard``): a shard's header is on disk, its body is not
- ``shard-written`` (store/writer.py): a shard is published whole, its index file (the commit) is not
- ``sae-step`` (sae/trainer.py): a training step has been dispatched (nothing of it saved)
- ``sae-checkpoint-written`` (sae/checkpoint.py): a checkpoint file is written whole, but
  ``latest.json``, its commit, is not

A top-level module because the pipeline, the store and the SAE trainer call it (none of them may
import the others' packages for it).
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "ARCLENS_TEST_CRASH_AT"
POINTS = ("batch-dispatched", "sample-added", "shard-writing", "shard-written")  # extract's points
_counts: dict[str, int] = {}
_lock = threading.Lock()


def parse(spec: str) -> tuple[str, int, signal.Signals]:
    """``"NAME[:N][=SIG]"`` -> (name, n, signal); ValueError for a malformed spec. NAME may be
    another package's point (the SAE trainer has its own), so it is not checked here."""
    spec, _, sig = spec.partition("=")
    name, _, nth = spec.partition(":")
    name = name.strip()
    if not name:
        raise ValueError(f"{spec!r}: expected NAME[:N][=SIG]")
    try:
        n = int(nth or 1)
        signum = signal.Signals[f"SIG{sig.strip().upper() or 'KILL'}"]
    except (ValueError, KeyError):
        raise ValueError(f"{spec!r}: expected NAME[:N][=SIG]") from None
    if n < 1:
        raise ValueError(f"{spec!r}: N counts from 1")
    return name, n, signum


def crash_point(name: str, flush=None) -> None:
    """Signal this process here if ``ARCLENS_TEST_CRASH_AT`` names this point and visit.
    ``flush``: a file to flush first, so that what was written before the point is on disk."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, nth, signum = parse(spec)
    if target != name:
        return
    with _lock:
        _counts[name] = _counts.get(name, 0) + 1
        hit = _counts[name] == nth
    if hit:
        if flush is not None:
            flush.flush()
        os.kill(os.getpid(), signum)
