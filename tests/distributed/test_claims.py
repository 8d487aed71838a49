"""The claim protocol under races, expiry, takeover and release, on local disk and moto's S3."""

from __future__ import annotations

import threading
import time

import pytest

from arclens.distributed import claims as workers
from arclens.distributed.claims import WorkerClaims, claimed_units, preferred_order, read_board
from arclens.errors import UserError
from arclens.store import fs as storefs

TTL = 1.0


def _claims(loc, units, name, ttl=TTL, **kw):
    dest, opts, _env = loc
    return WorkerClaims(dest, units, name, ttl, storage_options=opts, idle_timeout_s=30, **kw)


def _board(loc):
    dest, opts, _env = loc
    fs, root = storefs.get_fs(dest, opts)
    return fs, root, read_board(fs, root)


def test_racing_workers_claim_a_unit_exactly_once(any_store_location):
    store_location = any_store_location
    n = 8
    barrier = threading.Barrier(n)
    winners, errors = [], []
    claims = [_claims(store_location, ["u0"], f"w{i}") for i in range(n)]

    def contend(c):
        try:
            barrier.wait(timeout=30)
            lease = c._try_claim("u0", 0)
            if lease is not None:
                winners.append(lease)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=contend, args=(c,)) for c in claims]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert len(winners) == 1
    # Every other contender now sees a live lease and leaves it alone.
    state = _board(store_location)[2].units["u0"]
    assert all(c._next_epoch("u0", state, time.monotonic()) is None for c in claims)
    winners[0].release()


def test_threads_share_units_each_done_exactly_once(any_store_location):
    store_location = any_store_location
    dest, opts, _env = store_location
    units = [f"u{i}" for i in range(10)]
    processed: dict[str, list[str]] = {u: [] for u in units}
    lock = threading.Lock()

    def work(name, wid):
        for unit in claimed_units(dest, units, name, ttl_s=2.0, worker_id=wid, num_workers=4,
                                  idle_timeout_s=60, storage_options=opts):
            with lock:
                processed[unit].append(name)
            time.sleep(0.05)

    threads = [threading.Thread(target=work, args=(f"w{i}", i)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert {u: len(w) for u, w in processed.items()} == {u: 1 for u in units}
    assert _board(store_location)[2].done == set(units)
    assert len({w[0] for w in processed.values()}) > 1  # the work was actually shared


def test_live_lease_is_never_taken_and_a_dead_one_is_taken_after_ttl(store_location):
    a = _claims(store_location, ["u0"], "a")
    lease_a = a.next_unit()
    assert lease_a.unit == "u0" and lease_a.epoch == 0
    b = _claims(store_location, ["u0"], "b", poll_s=0.05)
    # While a's heartbeats continue, b must not take over, even after several ttls.
    deadline = time.monotonic() + 3 * TTL
    while time.monotonic() < deadline:
        _fs, _root, board = _board(store_location)
        assert b._next_epoch("u0", board.units["u0"], time.monotonic()) is None
        time.sleep(0.1)
    assert lease_a.held()
    # a "dies": its heartbeat thread stops without releasing anything (what kill -9 leaves).
    lease_a._finished.set()
    lease_a._thread.join(5)
    lease_a._finished.clear()
    started = time.monotonic()
    lease_b = b.next_unit()
    waited = time.monotonic() - started
    assert (lease_b.unit, lease_b.epoch) == ("u0", 1)
    assert TTL * 0.9 <= waited < TTL * 6
    # The old holder stopped trusting its lease before b could take it.
    assert not lease_a.held()
    assert b.finish(lease_b, complete=True) == "done"
    assert _board(store_location)[2].done == {"u0"}
    assert b.next_unit() is None  # everything is done


def test_holder_notices_takeover_and_release_frees_at_once(store_location):
    a = _claims(store_location, ["u0", "u1"], "a")
    lease = a.next_unit(["u0", "u1"])
    assert lease.unit == "u0"
    # Someone creates the next epoch (as a taker would): the holder drops the lease within a beat.
    fs, root, _ = _board(store_location)
    storefs.create_only(fs, workers._lease_path(root, "u0", 1), b'{"ttl_s": 1.0, "owner": "x"}')
    deadline = time.monotonic() + 5 * TTL
    while lease.held() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not lease.held()
    assert not lease.mark_done()  # lost: never marks done
    # Release: a fresh worker takes a released unit without waiting for the ttl.
    lease_u1 = a.next_unit(["u1"])
    a.finish(lease_u1, complete=False)
    c = _claims(store_location, ["u1"], "c", ttl=30.0)
    started = time.monotonic()
    taken = c.next_unit()
    assert (taken.unit, taken.epoch) == ("u1", 1)
    assert time.monotonic() - started < 5
    c.finish(taken, complete=False)


def test_stop_releases_the_current_unit(store_location):
    dest, opts, _env = store_location
    stop = threading.Event()
    it = claimed_units(dest, ["u0", "u1"], "a", ttl_s=TTL, worker_id=0, num_workers=1,
                       stop=stop.is_set, storage_options=opts)
    assert next(it) == "u0"
    stop.set()
    assert list(it) == []
    _fs, _root, board = _board(store_location)
    assert board.done == set()
    assert board.units["u0"].released


def test_preferred_orders_and_unit_ids():
    ids = [f"u{i}" for i in range(6)]
    assert preferred_order(ids, 1, 3) == ["u2", "u3", "u5", "u4", "u1", "u0"]
    assert sorted(preferred_order(ids, None, None)) == ids
    with pytest.raises(UserError, match="ids are letters"):
        workers.check_unit_id("a/b")
