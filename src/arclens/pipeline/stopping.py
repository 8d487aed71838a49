"""Graceful stop on SIGTERM (a preemption notice) or Ctrl-C: finish what is in flight, commit, exit 0.

The handler only sets a flag. The producer stops scheduling new batches when it sees it; batches
already dispatched run to completion, the writer commits its open shard, and the command exits 0,
so a preempted run loses no finished work and the next run resumes after it. A second Ctrl-C
raises KeyboardInterrupt at once (nothing is committed half-way: commits are atomic).
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


class StopRequest:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal_name: str | None = None

    def is_set(self) -> bool:
        return self.event.is_set()

    def request(self, why: str) -> None:
        self.signal_name = self.signal_name or why
        self.event.set()

    def _handler(self, signum, _frame) -> None:
        if signum == signal.SIGINT and self.event.is_set():
            raise KeyboardInterrupt
        self.request(signal.Signals(signum).name)

    @contextmanager
    def installed(self):
        """Install the handlers for the duration (main thread only: Python's rule for signals)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self._handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
