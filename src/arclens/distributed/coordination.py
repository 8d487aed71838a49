"""Host-level agreement between the processes of one jax.distributed job.

Through the job's coordination service (its key-value store and barriers), never through a device
computation: a device collective would queue behind the batches in flight and stall the dispatch
loop. Everything here costs one small RPC to process 0's coordinator. With one process every call
is free and local.

- ``Coordinator.broadcast(key, value)``: process 0's value, on every process.
- ``Coordinator.gather(key, value)``: every process's value, on every process.
- ``Coordinator.barrier(name)``: wait until every process got here.
- ``SharedLease``: a multi-process worker's claim on one unit (distributed/claims.py). Process 0
  holds the real lease. Before every batch every process takes process 0's verdict for that step
  (``held_at``), so they all stop at the same batch. Before every commit each process asks process
  0 whether the claim is still held *now* (``held``), so a process that was frozen past its claim's
  ttl commits nothing after it wakes up. That answer is process 0's own check, taken when asked.
"""

from __future__ import annotations

import logging
import threading
from itertools import count

log = logging.getLogger(__name__)

WAIT_S = 600.0  # how long a process waits for another's answer before the job counts as broken
_POLL_MS = 500


def _client():
    from jax._src import distributed

    client = distributed.global_state.client
    if client is None:
        raise RuntimeError("jax.distributed is not initialized")
    return client


def _timed_out(err: Exception) -> bool:
    return "DEADLINE_EXCEEDED" in str(err)


class Coordinator:
    """Agreement between the processes of ``runtime`` (every process must make the same calls in
    the same order; keys are namespaced per call site by the caller)."""

    def __init__(self, runtime, prefix: str = "arclens"):
        self.runtime = runtime
        self.prefix = prefix
        self._barriers = count()
        self.client = _client() if runtime.multi_process else None

    def key(self, *parts) -> str:
        return "/".join([self.prefix, *map(str, parts)])

    def broadcast(self, key: str, value: str | None, wait_s: float = WAIT_S) -> str:
        """Process 0's ``value`` on every process (the others pass anything, e.g. None)."""
        if self.client is None:
            return value
        if self.runtime.is_leader:
            self.client.key_value_set(key, value)
            return value
        return self.client.blocking_key_value_get(key, int(wait_s * 1000))

    def gather(self, key: str, value: str, wait_s: float = WAIT_S) -> list[str]:
        """Every process's ``value``, in process order, on every process."""
        if self.client is None:
            return [value]
        self.client.key_value_set(f"{key}/{self.runtime.process_id}", value)
        return [self.client.blocking_key_value_get(f"{key}/{i}", int(wait_s * 1000))
                for i in range(self.runtime.num_processes)]

    def barrier(self, name: str, wait_s: float = WAIT_S) -> None:
        if self.client is not None:
            self.client.wait_at_barrier(self.key("barrier", name, next(self._barriers)), int(wait_s * 1000))

    def forget(self, key: str) -> None:
        """Delete ``key`` and everything under it (call once every process is done with it)."""
        if self.client is not None and self.runtime.is_leader:
            try:
                self.client.key_value_delete(key)
            except Exception as err:  # noqa: BLE001 - leftover keys only cost the coordinator memory
                log.debug("could not delete %s (%s)", key, err)


class SharedLease:
    """One unit's claim as every process of a multi-process worker sees it (module doc).

    ``lease`` is the real ``claims.Lease`` on process 0, None on the others. ``namespace`` must be
    unique to this unit attempt and the same on every process."""

    def __init__(self, coordinator: Coordinator, unit: str, lease, namespace: str, answer_within_s: float):
        self.coordinator = coordinator
        self.unit = unit
        self.lease = lease
        self.namespace = namespace
        self.answer_within_s = answer_within_s
        self._asked = count()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._answering: list[threading.Thread] = []
        runtime = coordinator.runtime
        if runtime.is_leader and coordinator.client is not None:
            for pid in range(1, runtime.num_processes):
                t = threading.Thread(target=self._answer, args=(pid,), name=f"lease-answers-{pid}", daemon=True)
                t.start()
                self._answering.append(t)

    def held_at(self, step: int) -> bool:
        """Process 0's verdict for this step, the same on every process (the dispatch gate)."""
        c = self.coordinator
        mine = ("1" if self.lease.held() else "0") if c.runtime.is_leader else None
        return c.broadcast(f"{self.namespace}/step/{step}", mine) == "1"

    def held(self) -> bool:
        """Asked before a commit: process 0's own check, now. A process 0 that does not answer
        within ``answer_within_s`` (frozen, or gone) counts as a lost claim: nothing is committed."""
        c = self.coordinator
        if c.runtime.is_leader:
            return self.lease.held()
        with self._lock:
            n = next(self._asked)
        base = f"{self.namespace}/ask/{c.runtime.process_id}/{n}"
        c.client.key_value_set(base, "?")
        try:
            return c.client.blocking_key_value_get(f"{base}/answer", int(self.answer_within_s * 1000)) == "1"
        except Exception as err:  # noqa: BLE001 - no answer: do not commit
            log.warning("claim %s: process 0 did not confirm it within %.0fs (%s); not committing", self.unit,
                        self.answer_within_s, str(err).splitlines()[0][:120])
            return False

    def _answer(self, pid: int) -> None:
        client = self.coordinator.client
        for n in count():
            base = f"{self.namespace}/ask/{pid}/{n}"
            while True:
                if self._closed.is_set():
                    return
                try:
                    client.blocking_key_value_get(base, _POLL_MS)
                    break
                except Exception as err:  # noqa: BLE001 - a timeout: look at the closed flag, ask again
                    if not _timed_out(err):
                        log.warning("claim %s: answering process %d failed (%s)", self.unit, pid, err)
                        return
            client.key_value_set(f"{base}/answer", "1" if self.lease.held() else "0")

    def close(self) -> None:
        """Stop answering (process 0; call after every process finished its commits for the unit)."""
        self._closed.set()
        for t in self._answering:
            t.join(timeout=5)
        self.coordinator.forget(self.namespace)
