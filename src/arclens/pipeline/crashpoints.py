"""Test hook: make the process SIGKILL itself at a named point, to test resume after `kill -9`.

``ARCLENS_TEST_CRASH_AT="NAME[:N][=SIG]"`` sends signal SIG (default KILL; e.g. ``=TERM`` to test
the graceful stop at a known point) to the process itself the N-th time (default 1st) it reaches
the point called NAME. Unset (always, outside tests), ``crash_point`` is one environment lookup.

Points in the extract pipeline:

- ``batch-dispatched``: a batch is on the device and nothing of it is written (mid-batch)
- ``sample-added``: the writer has added a sample to the open shard (mid-shard, uncommitted)
- ``shard-writing``: a shard's bytes are being written (mid-shard write)
- ``shard-written``: a shard is written whole but its index file, the commit, is not (between the
  shard write and its index)
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "ARCLENS_TEST_CRASH_AT"
_counts: dict[str, int] = {}
_lock = threading.Lock()


def _target() -> tuple[str, int, signal.Signals] | None:
    spec = os.environ.get(ENV)
    if not spec:
        return None
    spec, _, sig = spec.partition("=")
    name, _, nth = spec.partition(":")
    return name.strip(), int(nth or 1), signal.Signals[f"SIG{sig.strip().upper() or 'KILL'}"]


def crash_point(name: str) -> None:
    target = _target()
    if target is None or target[0] != name:
        return
    with _lock:
        _counts[name] = _counts.get(name, 0) + 1
        hit = _counts[name] == target[1]
    if hit:
        os.kill(os.getpid(), target[2])
