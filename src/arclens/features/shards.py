"""The features pass's host fold split over worker processes, one range of latents each.

Every statistic of a latent comes from its own firing pairs (features/fold.py), so the pairs of a
batch are grouped by latent range (features/pairs.py: on the device, where it tallies or holds the
codes), and each range is folded by a `LatentFold` in its own process, in parallel and free of the
interpreter lock. Each batch (its per-token columns and samples, pickled once with the arrays out
of band, and every worker's sums and pairs) is written once into shared memory (features/ring.py),
and each worker is told where its part is; it copies that out and says so. At the end the
workers' folds come back and are put together end to end (`LatentFold.concat`), which gives what
one fold of every latent gives (tests/features/test_fold_workers.py).

Workers are new interpreters (``python -m arclens.features.shards``), neither forked (the parent
runs JAX, whose threads a fork would copy mid-flight) nor multiprocessing's spawn, which imports
the caller's main module again in each worker and so fails in a script without a ``__main__``
guard. A worker ends when the pass ends, when its pipe closes (the parent exited), or on an
error, which it sends to the parent to raise.

The messages and the batch are pickled (multiprocessing's connections pickle too). They pass only
between this process and the workers it started, over a socket pair and an anonymous shared file
they inherit: never through a named file, a store or a network, so nothing from outside is ever
unpickled (SPEC.md section 3's readers, which read files, never unpickle anything).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import pickle
import shutil
import subprocess
import sys
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from arclens.errors import RunFailed
from arclens.features.fold import LatentFold
from arclens.features.pairs import RangePairs, latent_ranges
from arclens.features.ring import Mapping, Ring

_ACK = b"\x01"  # a worker's "done reading my last batch" (any other message is pickled: never this byte)
_SUMS = ("n_fires", "mass", "max")  # the batch's per-latent sums a worker folds (the role masses stay on the device)


class FoldWorkerError(RuntimeError):
    """A worker's fold raised: a bug, raised here with the worker's traceback."""


class FoldWorkerDied(RunFailed):
    """A worker was killed (out of memory, a signal): one line, exit status 1 at the command line."""


def _serve(conn: Connection, ring_fd: int) -> None:
    mapping = Mapping(ring_fd, writable=False)
    try:
        first_latent, d_sae, fold_kwargs = conn.recv()
        fold = LatentFold(d_sae, first_latent=first_latent, **fold_kwargs)
        while (message := conn.recv())[0] == "batch":  # ("batch", ring size, the pickled batch, arrays)
            _, size, (batch_at, batch_len, buffers_at), layout = message
            mapping.ensure(size)
            buffers = [mapping.read(at, "|u1", (n,)) for at, n in buffers_at]  # (the batch's arrays: copies)
            batch = pickle.loads(mapping.read_bytes(batch_at, batch_len), buffers=buffers)
            arrays = {name: mapping.read(at, dtype, shape) for name, dtype, shape, at in layout}
            conn.send_bytes(_ACK)  # (copied out: the parent may write over the slot)
            stats = {name: arrays[name] for name in _SUMS}
            pairs = arrays["latent"], arrays["token"], arrays["value"]
            fold.fold(batch, stats, pairs, arrays.get("interval"))
        mapping.close()
        fold.sweep()
        fold.consistency.close_all()
        captures, fold.captures = fold.captures, None  # (they stay: this worker writes their lines)
        conn.send(("ok", fold))
        fold.captures = captures
        while (request := conn.recv()) is not None:  # ("examples", path, intervals, strings, context, keys)
            from arclens.features.output import write_examples

            _, path, intervals, strings, context, keys = request
            conn.send(("ok", write_examples(path, fold, intervals, strings, context, keys, first_latent)))
    except EOFError:  # the parent went away: nothing to report to
        return
    except BaseException:  # noqa: BLE001 (every failure goes to the parent, which raises it)
        try:  # (kept short: the parent may be writing to this worker, so the pipe must take it whole)
            conn.send(("error", traceback.format_exc()[-16_000:]))
        except OSError:
            pass


class FoldWorkers:
    """A pool of worker processes, each folding one range of latents."""

    def __init__(self, d_sae: int, n_workers: int, fold_kwargs: dict):
        self.d_sae = d_sae
        self.ranges = latent_ranges(d_sae, n_workers)
        self._conns, self._procs = [], []
        self._ring = Ring()
        self._sent = 0  # batches sent to every worker
        self._acked = [0] * n_workers  # batches each worker has read out of the ring
        # (the parent's import path, so that a worker finds arclens wherever the parent found it;
        # and JAX on the CPU only: a worker never computes with it, and must never open, or
        # preallocate memory on, the parent's accelerator)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p), JAX_PLATFORMS="cpu")
        for lo, hi in self.ranges:
            conn, theirs = multiprocessing.Pipe(duplex=True)  # (a socket pair: one descriptor each)
            proc = subprocess.Popen([sys.executable, "-m", "arclens.features.shards", str(theirs.fileno()),
                                     str(self._ring.fd)],
                                    pass_fds=(theirs.fileno(), self._ring.fd), stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True)  # (a Ctrl-C or a group's SIGTERM is the parent's
            # to handle: a worker ends when the parent closes its socket, or exits)
            theirs.close()
            self._conns.append(conn)
            self._procs.append(proc)
            self._send(len(self._conns) - 1, (lo, hi - lo, fold_kwargs))

    def fold(self, batch, stats: dict, pairs: RangePairs) -> None:
        """Write the batch and each worker's latents' sums and pairs (grouped by these workers'
        ranges: features/pairs.py) into the next slot of the ring, and tell each worker where
        its part is."""
        # (protocol 5, its arrays out of band: they are copied once, into the slot, not into the
        # pickle and then the slot; the pickle itself is the batch's few small objects)
        buffers: list[pickle.PickleBuffer] = []
        blob = pickle.dumps(dataclasses.replace(batch, x=None), protocol=5, buffer_callback=buffers.append)
        raw = [np.frombuffer(b.raw(), np.uint8) for b in buffers]
        parts = []
        for i, (lo, hi) in enumerate(self.ranges):
            (lat, tok, val), interval = pairs.part(i)
            arrays = {k: stats[k][lo:hi] for k in _SUMS}
            arrays.update(latent=lat, token=tok, value=val)
            if interval is not None:
                arrays["interval"] = interval
            parts.append(arrays)
        flat = raw + [a for arrays in parts for a in arrays.values()]
        needed, ring = Ring.bytes_needed([blob], flat), self._ring
        if needed > ring.slot_bytes:  # (the first batch, or a larger one: every slot must be free)
            self._wait_for_acks(self._sent)
            ring.grow(needed)
        else:  # the slot's last batch must have been read by every worker
            self._wait_for_acks(self._sent - ring.n_slots + 1)
        (blob_at,), array_at = ring.write(self._sent % ring.n_slots, [blob], flat)
        at = iter(array_at)
        pickled = (blob_at, len(blob), [(next(at), a.nbytes) for a in raw])
        for i, arrays in enumerate(parts):
            layout = [(k, v.dtype.str, v.shape, next(at)) for k, v in arrays.items()]
            self._send(i, ("batch", ring.size, pickled, layout))
        self._sent += 1

    def _wait_for_acks(self, n: int) -> None:
        """Until every worker has read its first `n` batches out of the ring."""
        for i in range(len(self._conns)):
            while self._acked[i] < n:
                message = self._receive(i)
                if message is not None:  # a worker only speaks before the end to report its error
                    self._fail(i, message)

    def _receive(self, i: int):
        """Worker i's next message (None: an ack, counted); its death is raised."""
        try:
            raw = self._conns[i].recv_bytes()
        except (EOFError, OSError):  # (dead, or killed in the middle of its message)
            self._fail(i, None)
        if raw == _ACK:
            self._acked[i] += 1
            return None
        return pickle.loads(raw)

    def _send(self, i: int, message) -> None:
        conn = self._conns[i]
        try:
            while conn.poll():  # (its acks so far, read so that its end of the pipe never fills)
                if (early := self._receive(i)) is not None:
                    self._fail(i, early)
            conn.send(message)
        except (OSError, EOFError):  # (BrokenPipeError, ConnectionResetError, a message cut short)
            self._fail(i, self._last_words(i))

    def _last_words(self, i: int):
        """The error a worker sent before its pipe broke, if it sent one."""
        conn = self._conns[i]
        try:
            while conn.poll(1):
                raw = conn.recv_bytes()
                if raw != _ACK:
                    return pickle.loads(raw)
        except (EOFError, OSError):
            pass
        return None

    def _fail(self, i: int, message) -> None:
        lo, hi = self.ranges[i]
        self.close()
        if message is not None and message[0] == "error":
            raise FoldWorkerError(f"features: the fold of latents [{lo}, {hi}) failed in its worker:\n{message[1]}")
        raise FoldWorkerDied(f"features: the worker process folding latents [{lo}, {hi}) died (exit code "
                             f"{self._procs[i].returncode}): was it killed, or out of host memory? Nothing was "
                             "written; fewer --fold-workers hold the same state in fewer processes")

    def collect(self) -> LatentFold:
        """End the pass: every worker's fold, put together into the fold of all the latents,
        without the kept examples' activations (each worker keeps its own: `write_examples`)."""
        for i in range(len(self.ranges)):
            self._send(i, ("finish",))
        return LatentFold.concat(self._replies())

    def write_examples(self, path, intervals: list, strings, context: int, keys: list[str]) -> dict:
        """examples.jsonl at `path`: each worker writes its latents' lines to a part of it, all at
        once, and the parts are joined in latent order. Returns the referenced samples' records."""
        path = Path(path)
        parts = [path.with_name(f"{path.name}.part-{i}") for i in range(len(self.ranges))]
        for i, ((lo, hi), part) in enumerate(zip(self.ranges, parts)):
            self._send(i, ("examples", str(part), intervals[lo:hi], strings, context, keys))
        records: dict = {}
        for found in self._replies():
            records.update(found)
        with open(path, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
                part.unlink()
        return records

    def _replies(self) -> list:
        """One "ok" reply from every worker, in order (past its acks); an error or a death is raised."""
        replies = []
        for i in range(len(self._conns)):
            while (message := self._receive(i)) is None:
                pass
            if message[0] != "ok":
                self._fail(i, message)
            replies.append(message[1])
        return replies

    def close(self) -> None:
        if self._ring is None:
            return
        for conn in self._conns:
            conn.close()  # (a worker still reading sees the end of its pipe and exits)
        deadline = time.monotonic() + 5  # (one wait for them all; a worker still busy is then killed)
        for proc in self._procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._ring.close()
        self._ring = None


if __name__ == "__main__":  # a worker: python -m arclens.features.shards FD RING_FD (its end of the socket pair, the ring)
    _serve(Connection(int(sys.argv[1])), int(sys.argv[2]))
