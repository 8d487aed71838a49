"""Shared memory between the features pass and its fold workers (features/shards.py): each batch
is written once, and every worker reads its part in place of a copy through a pipe.

Through a socket pair every byte is copied by the kernel twice, and the batch's per-token columns
went to every worker: the parent's cost grew with the number of workers (18 ns a firing pair with
2 workers, 35 with 8, under a profiler; docs/BENCHMARKS.md). Here the parent makes one copy of each array into a
slot and sends each worker a few hundred bytes saying where its arrays are.

The memory is an anonymous file (``memfd_create`` on Linux; an unlinked temporary file elsewhere)
that the workers inherit as a descriptor, so nothing is left behind in /dev/shm by a crash. It
has `n_slots` slots used in turn: the parent writes slot ``i % n_slots`` for batch i only once
every worker has said it is done reading batch ``i - n_slots`` (`ack`), so it can run up to
`n_slots` - 1 batches ahead of the slowest worker. A batch too large for a slot grows every
slot, once the workers are done with all of them; each worker maps the file again when the size
it is told changes.
"""

from __future__ import annotations

import concurrent.futures
import mmap
import os
import tempfile

import numpy as np

from arclens.features.spans import copy_span

ALIGN = 64  # (each array starts on a cache line)
MIN_SLOT_BYTES = 1 << 20
GROWTH = 1.25  # a slot's room over the largest batch so far (few batches need it to grow again)


def shared_fd() -> int:
    """A file descriptor of an anonymous shared file, inheritable by a child given it in pass_fds."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create("arclens-fold", os.MFD_CLOEXEC)
    with tempfile.TemporaryFile() as f:  # (POSIX: already unlinked; its descriptor outlives the object)
        return os.dup(f.fileno())


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


class Mapping:
    """One process's view of the shared file, mapped again when its size changes."""

    def __init__(self, fd: int, writable: bool):
        self.fd, self.writable = fd, writable
        self.size, self.map = 0, None

    def ensure(self, size: int) -> None:
        if size == self.size:
            return
        if self.map is not None:
            self.map.close()  # (no view of it may be alive: the arrays read from it were copied)
        access = mmap.ACCESS_WRITE if self.writable else mmap.ACCESS_READ
        self.map, self.size = mmap.mmap(self.fd, size, access=access), size

    def read(self, offset: int, dtype: str, shape: tuple) -> np.ndarray:
        """A copy of the array at `offset` (the slot is written over once this batch is acked)."""
        count = int(np.prod(shape, dtype=np.int64))
        return np.frombuffer(self.map, dtype, count, offset).reshape(shape).copy()

    def read_bytes(self, offset: int, n: int) -> bytes:
        return self.map[offset:offset + n]

    def close(self) -> None:
        if self.map is not None:
            self.map.close()
            self.map = None


_SPLIT_BYTES = 4 << 20  # (below this, a second thread's hand-off costs more than it saves)
_WRITER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="arclens-ring-write")


class Ring:
    """The parent's side: slots to write batches into."""

    def __init__(self, n_slots: int = 3):
        self.fd = shared_fd()
        self.n_slots = n_slots
        self.slot_bytes = 0
        self.mapping = Mapping(self.fd, writable=True)

    @property
    def size(self) -> int:
        return self.n_slots * self.slot_bytes

    @staticmethod
    def bytes_needed(blobs: list[bytes], arrays: list[np.ndarray]) -> int:
        return sum(_aligned(len(b)) for b in blobs) + sum(_aligned(a.nbytes) for a in arrays)

    def grow(self, needed: int) -> None:
        """Slots of at least `needed` bytes (call only when no worker reads any slot)."""
        self.slot_bytes = _aligned(max(int(needed * GROWTH), MIN_SLOT_BYTES))
        os.ftruncate(self.fd, self.size)
        self.mapping.ensure(self.size)

    def write(self, slot: int, blobs: list[bytes], arrays: list[np.ndarray]) -> tuple[list[int], list[int]]:
        """Write `blobs` then `arrays` into `slot`; returns their offsets in the file.

        A large batch is copied by two threads, its bytes split between them: a copy into the
        shared map is bound by each thread's page walks, not by the memory (one thread writes
        ~8 GB/s here, two ~15: docs/BENCHMARKS.md), and the parent's ring write is most of its
        share of the fold."""
        at = slot * self.slot_bytes
        blob_at, array_at = [], []
        for blob in blobs:
            self.mapping.map[at:at + len(blob)] = blob
            blob_at.append(at)
            at += _aligned(len(blob))
        pieces = []  # (destination, source): flat bytes
        for a in arrays:
            a = np.ascontiguousarray(a)
            dst = np.frombuffer(self.mapping.map, np.uint8, a.nbytes, at)
            pieces.append((dst, a.reshape(-1).view(np.uint8)))
            array_at.append(at)
            at += _aligned(a.nbytes)
        total = sum(len(d) for d, _ in pieces)
        if total < _SPLIT_BYTES:
            copy_span(pieces, 0, total)
        else:
            other = _WRITER.submit(copy_span, pieces, total // 2, total)
            try:
                copy_span(pieces, 0, total // 2)
            finally:
                other.result()
        return blob_at, array_at

    def close(self) -> None:
        self.mapping.close()
        os.close(self.fd)
