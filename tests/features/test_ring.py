"""The shared memory the fold workers read their batches from (features/ring.py): what is written
is read back the same in another mapping of the file, also once it grew, with a memfd or the
temporary-file fallback; and a pass whose slots grow batch after batch writes the same FDIR."""

from __future__ import annotations

import os

import numpy as np
import pytest
from tests.support.fdirs import assert_same_fdir
from tests.support.features_brute import SETTINGS

from arclens.features import accumulate, ring


@pytest.mark.parametrize("memfd, split", [(True, False), (False, False), (True, True)])
def test_what_is_written_reads_back_in_another_mapping_also_after_growing(monkeypatch, memfd, split):
    """``split``: every write copied by two threads, the bytes cut wherever half falls (mid-array)."""
    if not memfd:
        monkeypatch.delattr(os, "memfd_create", raising=False)  # (other POSIX systems)
    if split:
        monkeypatch.setattr(ring, "_SPLIT_BYTES", 1)
    writer = ring.Ring(n_slots=2)
    reader = ring.Mapping(os.dup(writer.fd), writable=False)
    try:
        rng = np.random.default_rng(0)
        for size in (10, 3000, 50, 400_000):  # (the last needs every slot grown)
            arrays = [rng.random(size).astype(np.float32), rng.integers(0, 9, (size, 3)).astype(np.int16)]
            blob = bytes(rng.integers(0, 256, size % 997 + 1, dtype=np.uint8))
            needed = ring.Ring.bytes_needed([blob], arrays)
            if needed > writer.slot_bytes:
                writer.grow(needed)
            for slot in range(writer.n_slots):
                (blob_at,), array_at = writer.write(slot, [blob], arrays)
                reader.ensure(writer.size)
                assert reader.read_bytes(blob_at, len(blob)) == blob
                for a, at in zip(arrays, array_at):
                    got = reader.read(at, a.dtype.str, a.shape)
                    np.testing.assert_array_equal(got, a)
                    assert at % ring.ALIGN == 0 and at + a.nbytes <= (slot + 1) * writer.slot_bytes
        assert writer.slot_bytes > ring.MIN_SLOT_BYTES
    finally:
        reader.close()
        os.close(reader.fd)
        writer.close()


def test_slots_that_grow_batch_after_batch_write_the_same_fdir(exact_run, exact_store, tmp_path, monkeypatch):
    """Slots with no room to spare: every batch larger than those before grows them while the
    workers have older slots mapped, and they map the file again."""
    from arclens.features.run import FeaturesSettings, run

    arch, _sae, fdir = exact_run
    monkeypatch.setattr(accumulate, "GC_EVERY", 2)  # as exact_run
    monkeypatch.setattr(ring, "MIN_SLOT_BYTES", ring.ALIGN)
    monkeypatch.setattr(ring, "GROWTH", 1.0)
    grew, grow = [], ring.Ring.grow
    monkeypatch.setattr(ring.Ring, "grow", lambda self, needed: grew.append(needed) or grow(self, needed))
    out = tmp_path / "fdir"
    run(FeaturesSettings(sae=str(fdir.parent / "sae"), out=out, store=str(exact_store.dest), progress=False,
                         fold_workers=2, **SETTINGS))
    assert len(grew) >= 3, grew
    assert_same_fdir(out, fdir, f"{arch}, 2 workers, slots grown {len(grew)} times")
