"""Claims: how independent, preemptible workers that share nothing but the store's bucket agree on
who extracts which work unit.

A fleet of VMs runs the same ``arclens extract ... --out gs://bucket/store --worker-id I
--num-workers N``. The task set is cut into **work units** (distributed/units.py; the worker loop
is pipeline/workers.py). Workers agree on who does which unit through small objects
in the store, using only two operations every object store offers atomically: **create-only**
(``ifGenerationMatch=0`` on GCS, ``If-None-Match: *`` on S3, ``O_EXCL``/``link`` locally) and
**listing**. There is no coordinator to lose.

Objects (all names flat in two folders, so one listing shows the whole board)::

    DEST/claims/<unit>~<epoch:06d>.lease          who holds the unit in this epoch (JSON, create-only)
    DEST/claims/<unit>~<epoch:06d>~<n:06d>.beat   the holder's n-th heartbeat (create-only)
    DEST/claims/<unit>~<epoch:06d>.released       the holder gave the unit back (create-only)
    DEST/done/<unit>                              every sample of the unit is committed (create-only)

Protocol:

- **Claim.** A unit with no lease is claimed by creating epoch 0. A unit whose latest epoch ``e``
  is released or expired is taken over by creating epoch ``e+1``. Create-only makes exactly one
  contender win each epoch; the losers see FileExistsError and move on. (A retried create whose
  first response was lost is told apart by the owner token in the lease: ``store.fs.create_only``
  reads the object back and accepts it only if its bytes are ours.)
- **Renew.** While it works, the holder's background thread creates heartbeat ``n+1`` every
  ``ttl/5`` seconds and deletes heartbeat ``n-1`` (deletion is only tidying; nothing depends on it).
- **Expiry is judged by the observer's own clock.** A worker that lists the board remembers, per
  unit, the *signature* ``(epoch, newest heartbeat, released)`` and the moment (its own monotonic
  clock) it first saw it. The lease is expired when the signature has not changed for the lease's
  ``ttl_s`` (or the observer's own ttl, if longer). No two machines' wall clocks are ever compared,
  so clock skew cannot expire a live lease; a worker that just started must watch a stuck lease for
  a full ``ttl`` before taking it.
- **The holder stops first.** The holder counts its lease as valid only until half a ``ttl`` after
  the *start* of its newest successful heartbeat, and also drops it as soon as it sees epoch
  ``e+1``; once dropped it stays dropped. An observer can only take over a full ``ttl`` after it
  *saw* that heartbeat, which was after the heartbeat began, so (with clocks that tick at about the
  same rate) the old holder has stopped half a ``ttl`` before anyone else may start. The pipeline
  checks ``Lease.held()`` before every batch and before each commit; in a multi-process worker
  process 0 checks and the others take its answer (distributed/coordination.py ``SharedLease``).
- **Resume.** Whoever takes a unit over simply extracts it again: the store's index says which
  samples are committed, and those are skipped (exactly-once by key). A holder frozen longer than
  half a ttl finds its lease dropped when it wakes and commits nothing more. Only a freeze that
  lands between a commit's check and its create can still let one commit through after the
  takeover (object stores offer no fencing token); the store then keeps the first commit of each
  key and ``arclens verify`` reports the duplicate: the store, not this protocol, is the last line
  of the exactly-once guarantee.
- **Done.** After the unit's last shard is committed, the holder creates ``done/<unit>``. Nobody
  claims a unit that is done. A worker keeps polling until every unit is done, so while one live
  worker remains, no unit is left undone: an abandoned lease expires and is taken over.
- **Preemption (SIGTERM).** The pipeline stops scheduling, flushes and commits; the worker then
  creates the ``.released`` marker, which lets others take the unit at once instead of after ttl.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from arclens.errors import UserError
from arclens.store import fs as storefs

log = logging.getLogger(__name__)

CLAIMS = "claims"
DONE = "done"
DEFAULT_TTL_S = 120.0
# The holder trusts its lease for this fraction of ttl after its newest heartbeat began.
HOLDER_TRUST = 0.5
BEATS_PER_TTL = 5
MAX_POLL_S = 10.0

_UNIT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")
_CLAIM_RE = re.compile(r"^(?P<unit>[^~]+)~(?P<epoch>\d{6})(?:~(?P<beat>\d{6})\.beat|\.(?P<kind>lease|released))$")


def check_unit_id(unit: str) -> str:
    if not _UNIT_RE.match(unit):
        raise UserError(f"work unit {unit!r}: ids are letters, digits, '_', '.', '-' (no '/', no '~')")
    return unit


@dataclass
class UnitState:
    """The newest epoch of one unit as one listing shows it."""

    epoch: int = -1
    has_lease: bool = False
    beat: int = -1
    released: bool = False

    @property
    def signature(self) -> tuple:
        return (self.epoch, self.has_lease, self.beat, self.released)


@dataclass
class Board:
    """One snapshot of the claims and done folders."""

    units: dict[str, UnitState] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)


def read_board(fs, root: str) -> Board:
    board = Board(done=set(storefs.list_names(fs, storefs.join(root, DONE))))
    for name in storefs.list_names(fs, storefs.join(root, CLAIMS)):
        m = _CLAIM_RE.match(name)
        if not m:
            continue
        unit, epoch = m["unit"], int(m["epoch"])
        state = board.units.setdefault(unit, UnitState())
        if epoch > state.epoch:
            board.units[unit] = state = UnitState(epoch=epoch)
        elif epoch < state.epoch:
            continue
        if m["kind"] == "lease":
            state.has_lease = True
        elif m["kind"] == "released":
            state.released = True
        else:
            state.beat = max(state.beat, int(m["beat"]))
    return board


def _lease_path(root: str, unit: str, epoch: int) -> str:
    return storefs.join(root, CLAIMS, f"{unit}~{epoch:06d}.lease")


def _beat_path(root: str, unit: str, epoch: int, n: int) -> str:
    return storefs.join(root, CLAIMS, f"{unit}~{epoch:06d}~{n:06d}.beat")


def _released_path(root: str, unit: str, epoch: int) -> str:
    return storefs.join(root, CLAIMS, f"{unit}~{epoch:06d}.released")


def _done_path(root: str, unit: str) -> str:
    return storefs.join(root, DONE, unit)


class Lease:
    """A held claim on one unit; renews itself in a daemon thread until finished."""

    def __init__(self, fs, root: str, unit: str, epoch: int, token: str, ttl_s: float):
        self.fs, self.root, self.unit, self.epoch, self.token, self.ttl_s = fs, root, unit, epoch, token, ttl_s
        self._valid_until = time.monotonic() + ttl_s * HOLDER_TRUST  # the lease create counts as beat 0
        self._lost = threading.Event()
        self._finished = threading.Event()
        self._beat = 0
        self._thread = threading.Thread(target=self._renew_loop, name=f"lease-{unit}", daemon=True)
        self._thread.start()

    def held(self) -> bool:
        """Still ours: not finished, not taken over, and renewed recently enough (module doc).
        Once False, False for good: a late heartbeat never brings a lease back."""
        if self._finished.is_set() or self._lost.is_set():
            return False
        if time.monotonic() >= self._valid_until:
            self._lost.set()
            return False
        return True

    def held_at(self, step: int) -> bool:
        """The dispatch gate's check (one process: the same as ``held``)."""
        return self.held()

    def _renew_loop(self) -> None:
        interval = self.ttl_s / BEATS_PER_TTL
        while not self._finished.wait(interval):
            if not self.held():
                return  # dropped (expired, e.g. after a freeze): never announce a claim we no longer act on
            started = time.monotonic()
            try:
                if storefs.exists(self.fs, _lease_path(self.root, self.unit, self.epoch + 1)):
                    log.warning("claim %s epoch %d: taken over by another worker; stopping", self.unit, self.epoch)
                    self._lost.set()
                    return
                storefs.create_only(self.fs, _beat_path(self.root, self.unit, self.epoch, self._beat + 1), b"")
            except FileExistsError:
                # Only this thread writes our epoch's beats: an existing one means a lost-response
                # retry of our own create landed. It still counts as renewed.
                pass
            except Exception as err:  # noqa: BLE001 - keep trying until the trust window closes
                log.warning("claim %s: heartbeat failed (%s: %s)", self.unit, type(err).__name__, err)
                continue
            self._beat += 1
            self._valid_until = started + self.ttl_s * HOLDER_TRUST
            self._tidy(self._beat - 1)

    def _tidy(self, beat: int) -> None:
        if beat < 1:
            return
        try:
            self.fs.rm_file(_beat_path(self.root, self.unit, self.epoch, beat))
        except Exception as err:  # noqa: BLE001 - a leftover heartbeat only costs a listing entry
            log.debug("claim %s: could not delete heartbeat %d (%s)", self.unit, beat, err)

    def _stop(self) -> None:
        self._finished.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=max(5.0, self.ttl_s))

    def mark_done(self) -> bool:
        """Record the unit as finished (call after its last shard is committed). False when the
        lease was lost first: then the new holder finds every sample committed and finishes it."""
        if not self.held():
            log.warning("claim %s epoch %d: lost before done; the next holder will finish it", self.unit, self.epoch)
            self.release()
            return False
        self._stop()
        body = json.dumps({"unit": self.unit, "epoch": self.epoch, "owner": self.token, "time": time.time()})
        try:
            storefs.create_only(self.fs, _done_path(self.root, self.unit), body.encode())
        except FileExistsError:
            pass  # a previous holder got there first; both saw every sample committed
        self._tidy(self._beat)
        return True

    def release(self) -> None:
        """Give the unit back unfinished (SIGTERM, errors): others may take it at once. A lease
        that is no longer held writes nothing (another worker may hold the unit by now)."""
        still_ours = self.held()
        self._stop()
        if not still_ours:
            return
        try:
            storefs.create_only(self.fs, _released_path(self.root, self.unit, self.epoch), self.token.encode())
        except FileExistsError:
            pass
        except Exception as err:  # noqa: BLE001 - without the marker the lease simply expires
            log.warning("claim %s: could not release (%s); it will expire after %.0fs", self.unit, err, self.ttl_s)
        self._tidy(self._beat)


class WorkerClaims:
    """One worker's view of the board: hands out units one at a time (see module doc)."""

    def __init__(
        self,
        dest: str,
        unit_ids: Sequence[str],
        worker: str,
        ttl_s: float = DEFAULT_TTL_S,
        *,
        stop: Callable[[], bool] | None = None,
        poll_s: float | None = None,
        idle_timeout_s: float | None = None,
        storage_options: dict | None = None,
    ):
        if ttl_s <= 0:
            raise UserError(f"claim ttl must be positive, got {ttl_s}")
        if len(set(unit_ids)) != len(unit_ids):
            raise UserError("work units must be distinct")
        self.unit_ids = [check_unit_id(u) for u in unit_ids]
        self.fs, self.root = storefs.get_fs(dest, storage_options)
        self.worker = worker
        self.token = f"{worker}:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.ttl_s = float(ttl_s)
        self.stop = stop or (lambda: False)
        self.poll_s = poll_s if poll_s is not None else min(MAX_POLL_S, self.ttl_s / BEATS_PER_TTL)
        self.idle_timeout_s = idle_timeout_s
        self._seen: dict[str, tuple[tuple, float]] = {}  # unit -> (signature, first seen, monotonic)
        self._ttl_of: dict[tuple[str, int], float] = {}
        self.current: Lease | None = None
        self.gave_up = False  # next_unit returned None because of idle_timeout_s

    # -- observing ------------------------------------------------------------------------------

    def _lease_ttl(self, unit: str, epoch: int) -> float:
        """The ttl the holder promised (workers may run with different settings)."""
        key = (unit, epoch)
        if key not in self._ttl_of:
            try:
                self._ttl_of[key] = float(json.loads(storefs.read_bytes(self.fs, _lease_path(self.root, unit, epoch)))["ttl_s"])
            except (FileNotFoundError, ValueError, KeyError, TypeError):
                self._ttl_of[key] = self.ttl_s
        return self._ttl_of[key]

    def _expired(self, unit: str, state: UnitState, now: float) -> bool:
        seen = self._seen.get(unit)
        if seen is None or seen[0] != state.signature:
            self._seen[unit] = (state.signature, now)
            return False
        # Safety needs at least the holder's ttl; a worker configured with a longer ttl of its own is
        # more patient still (it never takes over sooner than its own claims would expire).
        return now - seen[1] >= max(self._lease_ttl(unit, state.epoch), self.ttl_s)

    def _next_epoch(self, unit: str, state: UnitState | None, now: float) -> int | None:
        """The epoch this worker may try to create for ``unit`` now, or None."""
        if state is None:
            return 0
        if state.released or not state.has_lease:
            # released, or a bare beat/marker left from a tidied epoch: the epoch is over.
            return state.epoch + 1
        return state.epoch + 1 if self._expired(unit, state, now) else None

    # -- claiming -------------------------------------------------------------------------------

    def _try_claim(self, unit: str, epoch: int) -> Lease | None:
        body = json.dumps({
            "unit": unit, "epoch": epoch, "owner": self.token, "worker": self.worker, "ttl_s": self.ttl_s,
            "time": time.time(),
        }).encode()
        try:
            storefs.create_only(self.fs, _lease_path(self.root, unit, epoch), body)
        except FileExistsError:
            return None
        if epoch > 0:
            log.info("worker %s: took over %s (epoch %d)", self.worker, unit, epoch)
        else:
            log.info("worker %s: claimed %s", self.worker, unit)
        return Lease(self.fs, self.root, unit, epoch, self.token, self.ttl_s)

    def poll(self, order: Sequence[str] | None = None) -> tuple[Lease | None, list[str]]:
        """One look at the board: ``(the Lease of a unit claimed now, None)``, else ``(None, the
        units not done yet)`` (empty: every unit is done)."""
        board = read_board(self.fs, self.root)
        todo = [u for u in (order or self.unit_ids) if u not in board.done]
        now = time.monotonic()
        for unit in todo:
            epoch = self._next_epoch(unit, board.units.get(unit), now)
            if epoch is not None and (lease := self._try_claim(unit, epoch)) is not None:
                self.current = lease
                return lease, todo
        return None, todo

    def next_unit(self, order: Sequence[str] | None = None) -> Lease | None:
        """Block until a unit is claimed (its Lease), or every unit is done / stop is set (None)."""
        order = list(order or self.unit_ids)
        idle_since = time.monotonic()
        while not self.stop():
            lease, todo = self.poll(order)
            if lease is not None:
                return lease
            if not todo:
                return None
            now = time.monotonic()
            if self.idle_timeout_s is not None and now - idle_since > self.idle_timeout_s:
                # Opt-in (--idle-exit): leave the remaining units to the workers that
                # hold them, and to whoever runs next if those die. Never the default.
                log.warning("worker %s: nothing to claim for %.0fs; leaving %d unit(s) held by others: %s",
                            self.worker, self.idle_timeout_s, len(todo), ", ".join(todo[:5]))
                self.gave_up = True
                return None
            wait = self.poll_s
            if self.idle_timeout_s is not None:
                wait = min(wait, max(0.05, idle_since + self.idle_timeout_s - now))
            self._sleep(wait)
        return None

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stop() and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.2))

    def finish(self, lease: Lease, complete: bool) -> str:
        """End this worker's hold on ``lease``'s unit: "done" (``complete``, the done marker
        written), "released" (given back unfinished: others may take it at once), or "lost" (no
        longer ours: whoever holds it now finishes it; nothing was written)."""
        self.current = None
        held = lease.held()
        if complete and lease.mark_done():
            return "done"
        lease.release()
        return "released" if held else "lost"


def preferred_order(unit_ids: Sequence[str], worker_id: int | None, num_workers: int | None) -> list[str]:
    """Worker I of N starts with the I-th contiguous block of units, then helps the next workers
    with theirs, each block from its end, so two workers rarely race for the same unit. Without an
    id, a random rotation. (Ids only reduce contention; the claims alone make the protocol safe.)"""
    units = list(unit_ids)
    if not units:
        return units
    if worker_id is None:
        start = uuid.uuid4().int % len(units)
        return units[start:] + units[:start]
    n_workers = max(1, num_workers or 1)
    i = worker_id % n_workers

    def block(j: int) -> list[str]:
        return units[len(units) * j // n_workers:len(units) * (j + 1) // n_workers]

    others = [u for k in range(1, n_workers) for u in reversed(block((i + k) % n_workers))]
    return block(i) + others


def claimed_units(
    dest: str,
    unit_ids: Sequence[str],
    worker: str,
    ttl_s: float = DEFAULT_TTL_S,
    *,
    worker_id: int | None = None,
    num_workers: int | None = None,
    stop: Callable[[], bool] | None = None,
    idle_timeout_s: float | None = None,
    storage_options: dict | None = None,
) -> Iterator[str]:
    """Yield units this worker now holds, until every unit is done (see module doc).

    Contract: asking for the next unit means the previous one is finished (all its samples
    committed); it is then marked done. Stopping the iteration (``break``, an exception, or
    ``stop()`` becoming true) releases the current unit unfinished. Between batches, check
    ``claims.current.held()`` via :class:`WorkerClaims` when you need to stop on a lost lease.
    """
    claims = WorkerClaims(dest, unit_ids, worker, ttl_s, stop=stop, idle_timeout_s=idle_timeout_s,
                          storage_options=storage_options)
    order = preferred_order(claims.unit_ids, worker_id, num_workers)
    while (lease := claims.next_unit(order)) is not None:
        complete = False
        try:
            yield lease.unit
            # Resumed without a stop request: the consumer finished the unit.
            complete = lease.held() and not claims.stop()
        finally:
            claims.finish(lease, complete)
