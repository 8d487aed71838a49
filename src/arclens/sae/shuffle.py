"""The device-side shuffle buffer of on-the-fly training: forward-pass captures -> mixed batches,
without the activations ever leaving the device.

The tokens of one prompt are correlated, and a forward batch holds a few prompts. So the
captures of ``window`` consecutive forward batches are packed into one device buffer (only their
valid tokens, in order), the buffer is permuted on the device with a key drawn from
``(seed, epoch, window)``, and consecutive ``batch_tokens`` rows of it are the training batches.
What is left (fewer than a batch) is carried into the next window, across epochs too, so every
valid token is trained on once per epoch. It is the store source's window shuffle
(store_source.py), with forward batches in place of shards.

A position is ``(epoch, window, batch)`` plus the window's carry-in (fewer than ``batch_tokens``
rows, copied to the host only when a checkpoint is written). A resumed run recomputes that one
window's forward batches (the extract job skips the earlier ones without computing them),
packs and permutes them identically, and continues at the batch it stopped at.

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

DEFAULT_WINDOW_BATCHES = 16


@dataclass(frozen=True)
class FlyPosition:
    epoch: int = 0
    window: int = 0
    batch: int = 0
    carry: dict = field(default_factory=dict, compare=False)  # hook -> array [n_carry, d] (device or host)

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


@functools.partial(jax.jit, static_argnames=("size",))
def _start(carry, size: int):
    """A buffer of ``size`` rows that starts with the ``[batch_tokens, d]`` carry."""
    return jax.lax.dynamic_update_slice_in_dim(jnp.zeros((size, carry.shape[1]), carry.dtype), carry, 0, axis=0)


@functools.partial(jax.jit, donate_argnums=(0,))
def _pack(buffer, offset, captures, valid):
    """``captures [B, T, d]``'s valid tokens, in order, written at ``buffer[offset:]``."""
    flat = captures.reshape(-1, captures.shape[-1]).astype(buffer.dtype)
    v = valid.reshape(-1)
    dest = jnp.where(v, offset + jnp.cumsum(v) - 1, buffer.shape[0])
    return buffer.at[dest].set(flat, mode="drop"), offset + jnp.sum(v, dtype=jnp.int32)


@functools.partial(jax.jit, static_argnames=("shuffle",))
def _permute(buffers, n_total, key, shuffle: bool):
    if not shuffle:
        return buffers
    size = next(iter(buffers.values())).shape[0]
    keys = jnp.where(jnp.arange(size) < n_total, jax.random.uniform(key, (size,)), 2.0)
    perm = jnp.argsort(keys)  # the n_total valid rows first, uniformly permuted
    return {h: b[perm] for h, b in buffers.items()}


class DeviceShuffle:
    """Training batches from forward batches, mixed on the device (see the module doc).

    ``forward(epoch, start)`` must yield ``(captures {hook: [B, T, d]}, valid [B, T])`` for the
    forward batches of ``epoch`` from index ``start`` on, and end at the epoch's end, or early on
    a stop request (``stopped()`` is then True, and this stream ends too).
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
        bs = batch_tokens

        def cut(buffers, j):
            return {h: jax.lax.dynamic_slice_in_dim(b, j * bs, bs) for h, b in buffers.items()}

        self._cut = jax.jit(cut, **({"out_shardings": batch_sharding} if batch_sharding is not None else {}))
        self._carry_cut = jax.jit(cut)

    def batches(self, forward, position: FlyPosition | None = None) -> Iterator[tuple[dict, FlyPosition]]:
        pos = position or FlyPosition()
        epoch, w, b0 = pos.epoch, pos.window, pos.batch
        bs, W = self.batch_tokens, self.window_batches
        carry, n_carry = self._carry_from(pos.carry)
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
                # Room for the carry, every token of the window, and one batch of slack after the
                # last full batch (so the carry is cut from inside the buffer).
                size = buffer_size(2 * bs + sum(int(np.prod(valid.shape)) for _, valid in chunk))
                carry_in = {h: (carry[h], n_carry) for h in self.hooks} if carry else {}
                buffers = {}
                for h in self.hooks:
                    width = chunk[0][0][h].shape[-1]
                    buf = _start(carry[h] if carry else jnp.zeros((bs, width), self.dtype), size)
                    off = jnp.int32(n_carry)
                    for caps, valid in chunk:
                        buf, off = _pack(buf, off, caps[h], valid)
                    buffers[h], n_dev = buf, off
                del chunk
                n_total = int(n_dev)  # the one host read of the window
                mixed = _permute(buffers, jnp.int32(n_total), window_key(self.seed, epoch, w), self.shuffle)
                del buffers
                full = n_total // bs
                for j in range(b0, full):
                    yield self._cut(mixed, jnp.int32(j)), FlyPosition(epoch, w, j + 1, carry_in)
                carry, n_carry = self._carry_cut(mixed, jnp.int32(full)), n_total - full * bs
                del mixed
                b0 = 0
                w += 1
            epoch, w = epoch + 1, 0

    def _carry_from(self, saved: dict):
        """``({hook: [batch_tokens, d] device array}, n)`` from a position's carry."""
        if not saved:
            return {}, 0
        out, n = {}, 0
        for h, value in saved.items():
            if isinstance(value, tuple):  # (padded device array, count), as batches() makes them
                out[h], n = value
                continue
            rows = np.asarray(value)
            n = rows.shape[0]
            padded = np.zeros((self.batch_tokens, rows.shape[1]), rows.dtype)
            padded[:n] = rows
            out[h] = jnp.asarray(padded, self.dtype)
        return out, n

    def position_to_checkpoint(self, position: FlyPosition | None):
        from arclens.sae.trainer import to_host

        position = position or FlyPosition()
        arrays = {}
        for h, value in position.carry.items():
            padded, n = value if isinstance(value, tuple) else (value, len(value))
            arrays[f"data/carry/{h}"] = np.asarray(to_host(padded) if not isinstance(padded, np.ndarray) else padded)[:n]
        return position.to_json(), arrays

    def position_from_checkpoint(self, doc: dict, arrays: dict) -> FlyPosition:
        carry = {h: arrays[f"data/carry/{h}"] for h in self.hooks if f"data/carry/{h}" in arrays}
        return FlyPosition(int(doc["epoch"]), int(doc["window"]), int(doc["batch"]), carry)


def epoch_order_seed(seed: int, epoch: int) -> int:
    """The extract job's ``order_seed`` for one epoch: the batch order differs from epoch to epoch."""
    return zlib.crc32(f"{seed}:{epoch}".encode()) & 0x7FFFFFFF
