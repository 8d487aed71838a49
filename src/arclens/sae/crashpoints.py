"""Test hook: the training loop signals itself at a named point, to test resume after `kill -9`.

The same switch as extract's (pipeline/crashpoints.py, which the sae package may not import):
``ARCLENS_TEST_CRASH_AT="NAME[:N][=SIG]"`` sends SIG (default KILL; ``=TERM`` for the graceful
stop) to the process itself the N-th time (default 1st) it reaches the point NAME. Unset (always,
outside tests), a point costs one environment lookup.

Points of `train-sae`:

- ``sae-step``: a training step has been dispatched (mid-training, nothing of it saved)
- ``sae-checkpoint-written``: a checkpoint file is written whole, but ``latest.json``, its
  commit, is not
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "ARCLENS_TEST_CRASH_AT"
_counts: dict[str, int] = {}
_lock = threading.Lock()


def crash_point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    spec, _, sig = spec.partition("=")
    target, _, nth = spec.partition(":")
    if target.strip() != name:
        return
    with _lock:
        _counts[name] = _counts.get(name, 0) + 1
        hit = _counts[name] == int(nth or 1)
    if hit:
        os.kill(os.getpid(), signal.Signals[f"SIG{sig.strip().upper() or 'KILL'}"])
