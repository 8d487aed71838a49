"""The device-side shuffle buffer of on-the-fly training: forward-pass captures -> mixed batches,
without the activations ever leaving the device.

The tokens of one prompt are correlated, and a forward batch holds a few prompts. So the
captures of ``window`` consecutive forward batches are packed into one device buffer (only their
valid tokens, in order), the buffer is permuted on the device with a key drawn from
``(seed, epoch, window)``, and consecutive ``batch_tokens`` rows of it are the training batches.
What is left (fewer than a batch) is carried into the next window, across epochs too, so every
valid token is trained on once per epoch. It is the store source's window shuffle
(store_source.py), with forward batches in place of shards. (Over D data devices, "fewer than a
batch" is each device's: fewer than its share of a batch plus D rows, below.)

**Over a data-parallel mesh** the buffer is sharded over the ``data`` axis, so that each device
holds one device's share of the window, not the whole mesh's. Each device packs the valid tokens
of its own rows of the forward batches (after its share of the carry), then deals them out: its
``p``-th packed token goes to device ``p mod D`` (one ``all_to_all``). Every device then holds
every D-th token of every prompt of the window, within ``D`` tokens of each other's counts, and
permutes its own share; training batch ``k`` is rows ``[k b, (k + 1) b)`` of every device's share
(``b = batch_tokens / D``), which is the batch's sharding over ``data``. The carry goes back into
the next window's deal, so the devices' counts never drift apart: each carries fewer than
``b + D`` rows. With one device the deal is the identity and is skipped: the stream is the
one-device stream it always was.

A position is ``(epoch, window, batch)`` plus the window's carry-in (each device's leftover rows,
copied to the host only when a checkpoint is written). A resumed run recomputes that one
window's forward batches (the extract job skips the earlier ones without computing them),
packs, deals and permutes them identically, and continues at the batch it stopped at.

The buffer's size is a function of the window's batch shapes only (rounded up to a few sizes,
so there are few compiles); the number of valid tokens is counted on the device and read by the
host once per window, so the forward passes are never waited for between batches.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

DEFAULT_WINDOW_BATCHES = 16

ROWS = PartitionSpec("data", None)  # a buffer, a carry or a batch: rows split over the data axis


@dataclass(frozen=True)
class FlyPosition:
    epoch: int = 0
    window: int = 0
    batch: int = 0
    # hook -> the window's carry-in: a device array [D * carry_rows, d] (each device's rows padded),
    # or, restored from a checkpoint, host rows [sum(carry_counts), d] (each device's rows in turn).
    carry: dict = field(default_factory=dict, compare=False)
    carry_counts: tuple = field(default=(), compare=False)  # each device's carried rows

    def to_json(self) -> dict:
        return {"epoch": self.epoch, "window": self.window, "batch": self.batch}


def buffer_size(rows: int) -> int:
    """``rows`` rounded up to ``m * 2**e`` with ``8 <= m < 16``: at most 1/8 more, few sizes."""
    if rows <= 16:
        return 16
    e = max(0, rows.bit_length() - 4)
    return -(-rows // (1 << e)) * (1 << e)


def window_key(seed: int, epoch: int, window: int):
    key = jax.random.PRNGKey(seed)
    return jax.random.fold_in(jax.random.fold_in(key, epoch), window)


def dealt_counts(counts, n_shards: int) -> np.ndarray:
    """How many tokens each device holds after the deal, from each device's packed count: device
    ``j`` gets token ``p`` of device ``i`` for every ``p < counts[i]`` with ``p mod D == j``."""
    counts = np.asarray(counts, np.int64)
    j = np.arange(n_shards)
    return ((counts[None, :] - j[:, None] + n_shards - 1) // n_shards).sum(axis=1)


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


class DeviceShuffle:
    """Training batches from forward batches, mixed on the device (see the module doc).

    ``forward(epoch, start)`` must yield ``(captures {hook: [B, T, d]}, valid [B, T])`` for the
    forward batches of ``epoch`` from index ``start`` on, and end at the epoch's end, or early on
    a stop request (``stopped()`` is then True, and this stream ends too). ``batch_sharding``
    (the trainer's, rows over the mesh's ``data`` axis) sets the mesh; without it, one device.
    """

    def __init__(self, hooks, *, batch_tokens: int, seed: int, window_batches: int = DEFAULT_WINDOW_BATCHES,
                 shuffle: bool = True, dtype="float32", batch_sharding=None, stopped: Callable[[], bool] = lambda: False):
        self.hooks = list(hooks)
        self.batch_tokens = batch_tokens
        self.seed = seed
        self.window_batches = max(1, window_batches)
        self.shuffle = shuffle
        self.dtype = jnp.dtype(dtype)
        self.stopped = stopped
        if batch_sharding is not None:
            self.mesh = batch_sharding.mesh
        else:
            self.mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
        self.n_shards = D = int(dict(self.mesh.shape).get("data", 1))
        if batch_tokens % D:
            raise ValueError(f"batch_tokens {batch_tokens} does not divide over the data axis's {D} devices")
        self.shard_batch = batch_tokens // D
        # Each device carries fewer than its share of a batch plus D rows (the deal's imbalance).
        self.carry_rows = self.shard_batch + D - 1
        self._fns = _shard_functions(self.mesh, D, self.shard_batch, self.carry_rows, shuffle)

    def batches(self, forward, position: FlyPosition | None = None) -> Iterator[tuple[dict, FlyPosition]]:
        from arclens.sae.trainer import to_host

        pos = position or FlyPosition()
        epoch, w, b0 = pos.epoch, pos.window, pos.batch
        W, D, f = self.window_batches, self.n_shards, self._fns
        carry, counts = self._carry_from(pos)
        while True:
            stream = forward(epoch, w * W)
            while True:
                chunk = []
                for item in stream:
                    chunk.append(item)
                    if len(chunk) == W:
                        break
                if self.stopped():
                    return
                if not chunk:
                    break  # the epoch is over
                for _, valid in chunk:
                    if valid.shape[0] % D:
                        raise ValueError(f"a forward batch of {valid.shape[0]} rows does not divide over "
                                         f"the data axis's {D} devices")
                # Each device's slots: its share of every forward batch's slots. One size for the
                # packed buffer and the dealt one, so that the deal reuses the packed buffer's
                # memory (a donation XLA takes only between buffers of one shape): it holds the
                # carry, the slots, the deal's imbalance and a carry's worth of slack to cut from.
                slots = sum(int(np.prod(valid.shape)) for _, valid in chunk) // D
                size = _round_up(buffer_size(2 * self.carry_rows + slots + D - 1), D)
                carry_in, counts_in = carry, (counts if carry else ())
                if not carry:  # a run's first window
                    carry = {h: self._on_mesh(np.zeros((D * self.carry_rows, chunk[0][0][h].shape[-1]), self.dtype))
                             for h in self.hooks}
                buffers, offsets = f.start(carry, self._on_mesh(np.asarray(counts, np.int32)), size)
                for caps, valid in chunk:
                    buffers, offsets = f.pack(buffers, offsets, {h: caps[h] for h in self.hooks}, valid)
                del chunk
                held = dealt_counts(to_host(offsets), D)  # the one host read of the window
                mixed = f.mix(buffers, offsets, window_key(self.seed, epoch, w), size)
                del buffers
                full = int(held.min()) // self.shard_batch
                for j in range(b0, full):
                    yield f.cut(mixed, jnp.int32(j)), FlyPosition(epoch, w, j + 1, carry_in, counts_in)
                carry = f.carry(mixed, jnp.int32(full))
                counts = tuple(int(n) for n in held - full * self.shard_batch)
                del mixed
                b0 = 0
                w += 1
            epoch, w = epoch + 1, 0

    def _on_mesh(self, x):
        """A host array split over the data axis, ``x[j]`` on device j (each process holds all of it)."""
        x = np.asarray(x)
        sharding = NamedSharding(self.mesh, PartitionSpec("data", *(None,) * (x.ndim - 1)))
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    def _carry_from(self, pos: FlyPosition):
        """``({hook: [D * carry_rows, d] on the mesh}, each device's count)`` from a position."""
        D, C = self.n_shards, self.carry_rows
        if not pos.carry:
            return {}, (0,) * D
        counts = tuple(int(n) for n in pos.carry_counts)
        if len(counts) != D:
            raise ValueError(f"a carry of {len(counts)} devices' rows on a data axis of {D}")
        if set(pos.carry) != set(self.hooks):
            raise ValueError(f"a carry of hooks {sorted(pos.carry)}, for a stream of {sorted(self.hooks)}")
        out = {}
        for h, value in pos.carry.items():
            if isinstance(value, jax.Array):  # as batches() made it
                out[h] = value
                continue
            rows = np.asarray(value)
            padded = np.zeros((D * C, rows.shape[1]), rows.dtype)
            at = 0
            for j, n in enumerate(counts):
                padded[j * C: j * C + n] = rows[at: at + n]
                at += n
            out[h] = self._on_mesh(padded.astype(self.dtype))
        return out, counts

    def position_to_checkpoint(self, position: FlyPosition | None):
        return position_to_checkpoint(position)

    def position_from_checkpoint(self, doc: dict, arrays: dict) -> FlyPosition:
        return position_from_checkpoint(self.hooks, doc, arrays)


def position_to_checkpoint(position: FlyPosition | None) -> tuple[dict, dict]:
    """``(doc, arrays)``: each device's carried rows in turn, and with several devices their
    counts (one device writes what it always wrote). Every process must call it: the carry is
    split over the data axis, which may span processes."""
    from arclens.sae.trainer import to_host

    position = position or FlyPosition()
    doc, arrays = position.to_json(), {}
    counts = tuple(int(n) for n in position.carry_counts)
    for h, value in position.carry.items():
        if isinstance(value, jax.Array):  # each device's rows padded, as batches() made them
            padded, rows = to_host(value), value.shape[0] // len(counts)
            value = np.concatenate([padded[j * rows: j * rows + n] for j, n in enumerate(counts)])
        arrays[f"data/carry/{h}"] = np.asarray(value)
    if len(counts) > 1:
        doc["carry_counts"] = list(counts)
    return doc, arrays


def position_from_checkpoint(hooks, doc: dict, arrays: dict) -> FlyPosition:
    """The position ``position_to_checkpoint`` wrote; its carry is host rows until ``batches``
    puts it back on the mesh."""
    carry = {h: arrays[f"data/carry/{h}"] for h in hooks if f"data/carry/{h}" in arrays}
    if "carry_counts" in doc:
        counts = tuple(int(n) for n in doc["carry_counts"])
        if not carry:
            raise ValueError(f"a position with carry counts {list(counts)} but no carried rows")
    else:  # one device
        counts = (len(next(iter(carry.values()))),) if carry else ()
    return FlyPosition(int(doc["epoch"]), int(doc["window"]), int(doc["batch"]), carry, counts)


@dataclass(frozen=True)
class _ShardFunctions:
    start: Callable
    pack: Callable
    mix: Callable
    cut: Callable
    carry: Callable


@functools.lru_cache(maxsize=32)
def _shard_functions(mesh, D: int, shard_batch: int, carry_rows: int, shuffle: bool) -> _ShardFunctions:
    """The buffer's steps, each one program in which every device works on its own rows."""
    rows, one, whole = ROWS, PartitionSpec("data"), PartitionSpec()

    def on_mesh(fn, in_specs, out_specs, **jit_options):
        return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs), **jit_options)

    def start(carry, counts, *, size):
        return {h: jax.lax.dynamic_update_slice_in_dim(jnp.zeros((size, c.shape[1]), c.dtype), c, 0, axis=0)
                for h, c in carry.items()}, counts

    def pack(buffers, offsets, captures, valid):
        """This device's rows of a forward batch: their valid tokens, in order, from ``offset`` on."""
        v = valid.reshape(-1)
        out = {}
        for h, b in buffers.items():
            dest = jnp.where(v, offsets[0] + jnp.cumsum(v) - 1, b.shape[0])
            flat = captures[h].reshape(-1, captures[h].shape[-1]).astype(b.dtype)
            out[h] = b.at[dest].set(flat, mode="drop")
        return out, offsets + jnp.sum(v, dtype=jnp.int32)

    def mix(buffers, offsets, key, *, size):
        """Deal (several devices), then permute this device's share with its own key: the
        window's key on device 0, so that one device keeps the one-device stream, and the key
        folded with the device's index on the others."""
        n = offsets[0]
        j = jax.lax.axis_index("data")
        if D > 1:
            counts = jax.lax.all_gather(n, "data")
            got = (counts - j + D - 1) // D  # from device i: its tokens p < n_i with p mod D == j
            ends = jnp.cumsum(got)
            n = ends[-1]
        row = jnp.arange(size)
        if shuffle:
            key = jnp.where(j == 0, key, jax.random.fold_in(key, j))
            row = jnp.argsort(jnp.where(row < n, jax.random.uniform(key, (size,)), 2.0))  # the n valid rows first
        if D == 1:
            return {h: b[row] for h, b in buffers.items()} if shuffle else buffers
        # The dealt share in order is device 0's rows p mod D == j, then device 1's, ...; its
        # row x comes from device i = the first with ends[i] > x, as that device's
        # (x - (ends[i] - got[i]))-th. Gathered straight into the permuted order: no dealt copy
        # is made.
        i = jnp.minimum(jnp.searchsorted(ends, row, side="right"), D - 1)
        src = (row - (ends[i] - got[i])) * D + i
        keep = (jnp.arange(size) < n)[:, None]

        def deal(b):
            out = b.reshape(-1, D, b.shape[1])  # out[:, k]: the rows p mod D == k, for device k
            back = jax.lax.all_to_all(out, "data", 1, 1).reshape(-1, b.shape[1])  # back[q D + i]: device i's q-th
            return jnp.where(keep, back[jnp.where(keep[:, 0], src, 0)], 0)

        return {h: deal(b) for h, b in buffers.items()}

    def cut(mixed, k):
        return {h: jax.lax.dynamic_slice_in_dim(b, k * shard_batch, shard_batch) for h, b in mixed.items()}

    def carry(mixed, full):
        return {h: jax.lax.dynamic_slice_in_dim(b, full * shard_batch, carry_rows) for h, b in mixed.items()}

    # The buffer's size is static (one program per size, and few sizes: ``buffer_size``).
    @functools.lru_cache(maxsize=64)
    def start_sized(size: int):
        return on_mesh(functools.partial(start, size=size), (rows, one), (rows, one))

    @functools.lru_cache(maxsize=64)
    def mix_sized(size: int):
        return on_mesh(functools.partial(mix, size=size), (rows, one, whole), rows, donate_argnums=(0,))

    return _ShardFunctions(
        start=lambda c, counts, size: start_sized(size)(c, counts),
        pack=on_mesh(pack, (rows, one, PartitionSpec("data", None, None), rows), (rows, one), donate_argnums=(0,)),
        mix=lambda b, offsets, key, size: mix_sized(size)(b, offsets, key),
        cut=on_mesh(cut, (rows, whole), rows),
        carry=on_mesh(carry, (rows, whole), rows),
    )


def epoch_order_seed(seed: int, epoch: int) -> int:
    """The extract job's ``order_seed`` for one epoch: the batch order differs from epoch to epoch."""
    return zlib.crc32(f"{seed}:{epoch}".encode()) & 0x7FFFFFFF
