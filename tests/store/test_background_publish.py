"""Shards are published by a small thread pool: the feeder never waits on one shard, a failure is
raised by the next call and retried by flush(), nothing is lost or doubled, memory stays bounded."""

from __future__ import annotations

import threading
import time

import pytest
from tests.support.synth_store import keys, sample, store_metadata

from arclens.store.verify import verify_store
from arclens.store.writer import StoreWriter, committed_keys, open_or_create_store


@pytest.mark.parametrize("threads", [0, 1, 3])
def test_every_sample_committed_once_whatever_the_pool(tmp_path, threads):
    dest = str(tmp_path / "s")
    open_or_create_store(dest, store_metadata())
    all_keys = keys(15)
    with StoreWriter(dest, "w0", shard_bytes=3000, publish_threads=threads) as w:
        for k in all_keys:
            w.add(*sample(k))
    assert len(w.commits) > 3
    assert committed_keys(dest) == set(all_keys)
    assert sum(len(c.samples) for c in w.commits) == len(all_keys)  # no key in two shards
    assert verify_store(dest).ok


def test_a_failed_background_publish_is_raised_then_retried_without_loss(tmp_path, monkeypatch):
    dest = str(tmp_path / "s")
    open_or_create_store(dest, store_metadata())
    w = StoreWriter(dest, "w0", shard_bytes=3000, publish_threads=2)
    real = w._publish_shard
    failures = {"left": 1}

    def flaky(shard_rel, meta, chunks):
        if failures["left"]:
            failures["left"] -= 1
            raise OSError("disk full (injected)")
        return real(shard_rel, meta, chunks)

    w._publish_shard = flaky
    all_keys = keys(12)
    with pytest.raises(OSError, match="injected"):
        for k in all_keys:  # the failure surfaces at a later add() or at flush()
            w.add(*sample(k))
        w.flush()
    added = {k for k in all_keys if k in w._keys_seen}
    assert committed_keys(dest) < added  # the failed shard's samples are not committed
    w.flush()  # the retry publishes the kept shard
    for k in all_keys:
        if k not in added:
            w.add(*sample(k))
    w.close()
    assert committed_keys(dest) == set(all_keys)
    assert sum(len(c.samples) for c in w.commits) == len(all_keys)
    assert verify_store(dest).ok


def test_pending_shards_never_exceed_the_pool(tmp_path):
    dest = str(tmp_path / "s")
    open_or_create_store(dest, store_metadata())
    w = StoreWriter(dest, "w0", shard_bytes=2000, publish_threads=2)
    real = w._publish_shard
    in_flight, most = [0], [0]
    lock = threading.Lock()

    def slow(shard_rel, meta, chunks):
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        time.sleep(0.05)
        try:
            return real(shard_rel, meta, chunks)
        finally:
            with lock:
                in_flight[0] -= 1

    w._publish_shard = slow
    for k in keys(12):
        w.add(*sample(k))
        assert len(w._pending) <= 2
    w.close()
    assert most[0] == 2  # the pool really publishes two shards at once, and never more
    assert committed_keys(dest) == set(keys(12))


def test_commits_are_listed_in_shard_order_even_when_a_later_shard_finishes_first(tmp_path):
    dest = str(tmp_path / "s")
    open_or_create_store(dest, store_metadata())
    w = StoreWriter(dest, "w0", shard_bytes=2000, publish_threads=3)
    real = w._publish_shard
    calls = [0]

    def first_is_slow(shard_rel, meta, chunks):
        calls[0] += 1
        if calls[0] == 1:
            time.sleep(0.3)  # the pool's other threads commit later shards meanwhile
        return real(shard_rel, meta, chunks)

    w._publish_shard = first_is_slow
    for k in keys(10):
        w.add(*sample(k))
    w.close()
    shards = [c.shard for c in w.commits]
    assert len(shards) > 3 and shards == sorted(shards)
