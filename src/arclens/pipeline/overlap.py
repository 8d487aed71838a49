"""Threads joined by bounded queues: the machinery that overlaps extract's stages.

Why threads: the stages that must overlap with the device are tokenization (Rust, releases the
GIL), device-to-host copies (JAX releases the GIL while it waits) and shard writes (file/network
I/O). The device stage itself only dispatches asynchronous work. Why bounded queues: they are the
back-pressure that keeps host memory flat (a fast producer cannot run ahead by more than a few
batches) while still letting a slow shard write be absorbed without stalling the device.

The first exception in any stage aborts every stage (each blocking put/get polls the abort flag)
and is re-raised by ``Stages.join`` in the calling thread, so a failing writer never leaves the
device loop hanging on a full queue.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_DONE = object()
_POLL_S = 0.05


class Aborted(Exception):
    """Raised inside a stage when another stage failed; never escapes ``Stages.join``."""


class Stages:
    def __init__(self) -> None:
        self.abort = threading.Event()
        self._errors: list[BaseException] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.busy = BusyTimer()

    def channel(self, maxsize: int) -> Channel:
        return Channel(self, maxsize)

    def fail(self, err: BaseException) -> None:
        with self._lock:
            if not isinstance(err, Aborted):
                self._errors.append(err)
        self.abort.set()

    def start(self, name: str, target: Callable[[], None]) -> None:
        """Run ``target`` in a daemon thread; an exception it raises aborts all stages."""

        def run() -> None:
            try:
                target()
            except BaseException as err:  # noqa: BLE001 - handed to join()
                self.fail(err)

        t = threading.Thread(target=run, name=f"arclens-{name}", daemon=True)
        self._threads.append(t)
        t.start()

    def run_here(self, target: Callable[[], None]) -> None:
        """Run a stage in the calling thread (the device loop), with the same error handling."""
        try:
            target()
        except BaseException as err:  # noqa: BLE001
            self.fail(err)

    def join(self) -> None:
        for t in self._threads:
            while t.is_alive():
                t.join(timeout=_POLL_S)
        if self._errors:
            raise self._errors[0]


class Channel:
    """A bounded FIFO between two stages; ``close()`` ends the consumer's iteration."""

    def __init__(self, stages: Stages, maxsize: int) -> None:
        self._stages = stages
        self._q: queue.Queue = queue.Queue(maxsize=max(1, maxsize))

    def put(self, item) -> None:
        while True:
            if self._stages.abort.is_set():
                raise Aborted()
            try:
                self._q.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        self.put(_DONE)

    def __iter__(self) -> Iterator:
        while True:
            if self._stages.abort.is_set():
                raise Aborted()
            try:
                item = self._q.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if item is _DONE:
                return
            yield item


class BusyTimer:
    """Seconds each stage spent working (not waiting on a queue), for the summary's time split."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def measure(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            with self._lock:
                self.seconds[stage] += dt


class DeviceClock:
    """Estimates device busy time without synchronising the device loop.

    The copy stage sees batches complete in order; batch i kept the device busy from when it could
    start (its dispatch, or the previous batch's completion, whichever is later) until its result
    reached the host. Summing those intervals measures compute plus device-to-host transfer.
    """

    def __init__(self) -> None:
        self._last_done = 0.0
        self.seconds = 0.0

    def completed(self, dispatched_at: float, done_at: float) -> None:
        start = max(dispatched_at, self._last_done)
        self.seconds += max(0.0, done_at - start)
        self._last_done = done_at
