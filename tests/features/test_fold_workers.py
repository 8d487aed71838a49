"""The host fold split over worker processes, a range of latents each (features/shards.py), writes
the very FDIR of the fold in one process, with the counts on the host or the device; and a worker
that fails or dies stops the pass with its range named, never a hang or a partial FDIR."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
from tests.support.fdirs import assert_same_fdir
from tests.support.features_brute import SETTINGS

from arclens.features import accumulate
from arclens.features.batch import BatchBuilder
from arclens.features.layout import N_ROLE_COLUMNS
from arclens.features.pairs import cut_on_host, latent_ranges
from arclens.features.shards import FoldWorkerDied, FoldWorkerError, FoldWorkers


@pytest.mark.parametrize("workers, tallies", [(3, "host"), (2, "device")])
def test_workers_write_the_one_process_fdir(exact_run, exact_store, tmp_path, monkeypatch, workers, tallies):
    from arclens.features.run import FeaturesSettings, run

    arch, _sae, fdir = exact_run  # (checked against brute force in test_exact_statistics.py)
    monkeypatch.setattr(accumulate, "GC_EVERY", 2)  # as exact_run: the workers sweep too
    folded = []
    original = FoldWorkers.fold
    monkeypatch.setattr(FoldWorkers, "fold", lambda self, *a: folded.append(len(self.ranges)) or original(self, *a))
    out = tmp_path / "fdir"
    run(FeaturesSettings(sae=str(fdir.parent / "sae"), out=out, store=str(exact_store.dest), progress=False,
                         tallies=tallies, fold_workers=workers, **SETTINGS))
    assert len(folded) > 4 and set(folded) == {workers}, "the batches were not folded by the workers"
    assert_same_fdir(out, fdir, f"{arch}, {workers} workers, {tallies} counts")


def test_latent_ranges_cover_every_latent_once():
    for d_sae in (1, 5, 8, 2048):
        for n in range(1, min(d_sae, 9) + 1):
            ranges = latent_ranges(d_sae, n)
            assert ranges[0][0] == 0 and ranges[-1][1] == d_sae and len(ranges) == n
            assert all(a < b for a, b in ranges) and all(r[1] == s[0] for r, s in itertools.pairwise(ranges))


def _one_batch(d_sae: int, mass_columns: int | None = None):
    batch = BatchBuilder(4).build(np.zeros((4, 2), np.float32))
    mass = np.zeros(d_sae if mass_columns is None else (d_sae, mass_columns))
    stats = {"n_fires": np.zeros(d_sae, np.int64), "mass": mass, "max": np.zeros(d_sae, np.float32),
             "role_tokens": np.zeros(N_ROLE_COLUMNS)}
    pairs = (np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.float32))
    return batch, stats, cut_on_host(pairs, None, latent_ranges(d_sae, 2))


def _workers(d_sae: int, n: int) -> FoldWorkers:
    return FoldWorkers(d_sae, n, {"group_sizes": np.zeros(0, np.int64), "top_k": 2, "n_intervals": 3,
                                  "per_interval": 1, "gc_every": 32})


def test_a_killed_worker_is_named_not_waited_for():
    workers = _workers(8, 2)
    try:
        # (in a session of their own: a Ctrl-C or a SIGTERM to the parent's group is the parent's to handle)
        assert all(os.getsid(p.pid) == p.pid != os.getsid(0) for p in workers._procs)
        workers.fold(*_one_batch(8))
        workers._procs[1].kill()
        workers._procs[1].wait(10)
        with pytest.raises(FoldWorkerDied, match=r"the worker process folding latents \[4, 8\) died \(exit code -9\)"):
            for _ in range(50):  # (the first sends may still fit in the pipe)
                workers.fold(*_one_batch(8))
            workers.collect()
    finally:
        workers.close()


def test_a_workers_error_comes_back_with_its_traceback():
    workers = _workers(8, 2)
    try:
        workers.fold(*_one_batch(8, mass_columns=3))  # sums of the wrong shape: each worker's += fails
        with pytest.raises(FoldWorkerError, match=r"(?s)the fold of latents \[0, 4\) failed in its worker:.*"
                                                  r"fold\.py.*ValueError"):
            workers.collect()
    finally:
        workers.close()
