"""Training batches from an activation store, in an order that is a function of the seed and that
a resumed run can seek into without reading what came before.

The order (one copy of it; docs/SAE.md):

- epoch ``e`` visits the committed shards in the permutation ``rng([seed, e])`` draws, cut into
  windows of ``buffer_shards`` shards;
- window ``w`` of epoch ``e`` pools its tokens with the carry-over of the previous window (fewer
  than one batch), permutes the pool with ``rng([seed, e, w])``, and cuts consecutive batches;
  what is left is the next window's carry-over (across epochs too, so no token is dropped);
- every hook the run trains on is cut with the same permutation: the rows of a batch are the same
  tokens for every hook (a transcoder's input and output, several SAEs sharing the batch).

This is the store reader's window shuffle (``Store.batches``), written so that a position is
``(epoch, window, batch)`` plus the window's carry-in: a resumed run re-reads one window, not
everything before it. The window's permutation only depends on the seed and the window's token
count, never on earlier data.

Several processes: every process reads the same windows and gathers only its own rows of each
global batch (``rows``), which it hands to ``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from arclens.errors import UserError
from arclens.store.reader import in_background

BUFFER_SHARDS = 4
BATCHES_AHEAD = 3


@dataclass(frozen=True)
class Position:
    """Where the stream is: the next batch is batch ``batch`` of window ``window`` of ``epoch``,
    whose pool starts with ``carry`` (host arrays per hook, the previous window's leftovers)."""

    epoch: int = 0
    window: int = 0
    batch: int = 0
    carry: dict[str, np.ndarray] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict:
        return {"epoch": self.epoch, "window": self.window, "batch": self.batch}


@dataclass
class HostBatch:
    arrays: dict[str, np.ndarray]  # this process's rows of the global batch
    position: Position  # the position after this batch


def store_fingerprint(store) -> dict:
    """What identifies a store's training data, whatever URL it is reached by: its metadata and
    its committed shards (a store that grew since is other data: a resume would see another order).
    Part of the settings a resume compares; ``describe`` adds the URL for provenance."""
    meta = json.dumps(store.metadata, sort_keys=True, default=str).encode()
    shards = "\n".join(f"{v.entry.shard}:{v.entry.sha256}:{v.n_tokens}" for v in store.shards).encode()
    return {"kind": "store", "n_tokens": int(store.n_tokens), "n_shards": len(store.shards),
            "metadata_sha256": hashlib.sha256(meta).hexdigest(), "shards_sha256": hashlib.sha256(shards).hexdigest()}


class StoreSource:
    def __init__(self, store, hooks, *, batch_tokens: int, seed: int, dtype: str = "float32",
                 buffer_shards: int = BUFFER_SHARDS, rows: slice | None = None, shuffle: bool = True):
        self.store = store
        self.hooks = list(hooks)
        unknown = [h for h in self.hooks if h not in store.hooks]
        if unknown:
            raise UserError(f"--store {store.dest}: no hook {', '.join(unknown)}; it has {', '.join(store.hooks)}")
        if store.n_tokens == 0:
            raise UserError(f"--store {store.dest}: no committed tokens to train on")
        self.batch_tokens = batch_tokens
        self.seed = seed
        self.shuffle = shuffle  # False: stored order (index files, then tokens), for comparisons
        self.buffer_shards = max(1, buffer_shards)
        self.rows = rows if rows is not None else slice(0, batch_tokens)
        stored = np.dtype(store.dtype)
        want = np.dtype(dtype) if dtype != "bfloat16" else _bf16()
        # A bf16 store is fed as bf16 even for float32 training: the device's upcast is exact and
        # the transfer half the size. A float32 store is rounded to bf16 on the host when asked.
        self.feed_dtype = stored if stored.itemsize <= want.itemsize else want

    @property
    def n_tokens(self) -> int:
        return int(self.store.n_tokens)

    def fingerprint(self) -> dict:
        return store_fingerprint(self.store)

    def describe(self) -> dict:
        """The fingerprint plus where the store was read from (arclens.json's ``source``)."""
        return {**self.fingerprint(), "store": self.store.dest, "model": self.store.metadata.get("model"),
                "hooks": list(self.store.hooks)}

    # -- the plan ----------------------------------------------------------------------------

    def windows(self, epoch: int) -> list[list]:
        views = self.store.shards
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(views))
            views = [views[i] for i in order]
        return [views[i : i + self.buffer_shards] for i in range(0, len(views), self.buffer_shards)]

    def _pool(self, window: list, carry: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        reads = [v.file.read(self.hooks) for v in window]
        pools = {}
        for h in self.hooks:
            parts = [carry[h]] if h in carry and len(carry[h]) else []
            parts += [v.visible(r[h]) for v, r in zip(window, reads)]
            pools[h] = np.concatenate(parts) if len(parts) > 1 else np.array(parts[0])
        return pools

    def _permutation(self, epoch: int, window: int, n_rows: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(n_rows)
        return np.random.default_rng([self.seed, epoch, window]).permutation(n_rows)

    # -- the stream --------------------------------------------------------------------------

    def host_batches(self, position: Position | None = None) -> Iterator[HostBatch]:
        """An endless stream of this process's rows of each batch, from ``position`` on."""
        pos = position or Position()
        epoch, w0, b0, carry = pos.epoch, pos.window, pos.batch, dict(pos.carry)
        bs = self.batch_tokens
        while True:
            windows = self.windows(epoch)
            for w in range(w0, len(windows)):
                carry_in = carry
                pools = self._pool(windows[w], carry_in)
                n = len(pools[self.hooks[0]])
                perm = self._permutation(epoch, w, n)
                full = n // bs
                for b in range(b0, full):
                    rows = perm[b * bs : (b + 1) * bs][self.rows]
                    arrays = {h: _as(np.take(p, rows, axis=0), self.feed_dtype) for h, p in pools.items()}
                    yield HostBatch(arrays, Position(epoch, w, b + 1, carry_in))
                carry = {h: np.take(p, perm[full * bs :], axis=0) for h, p in pools.items()}
                del pools, perm
                b0 = 0
            epoch, w0 = epoch + 1, 0

    def batches(self, position: Position | None = None, depth: int = BATCHES_AHEAD) -> Iterator[HostBatch]:
        """``host_batches`` made ahead in a background thread (numpy's gathers release the GIL,
        so the next batch is cut while the device trains on this one)."""
        return in_background(self.host_batches(position), depth, name="arclens-sae-batches")


    # -- the trainer's interface (also implemented by the on-the-fly source) -----------------

    def device_batches(self, position: Position | None, sharding):
        """``(batch {hook: global jax.Array [batch_tokens, d]}, position after it)`` forever.
        Each process reads the windows and feeds only its rows (``sharding`` splits rows over the
        mesh's ``data`` axis)."""
        from arclens.distributed.runtime import global_batch, local_batch_rows

        d = int(self.store.d_model)
        shape = (self.batch_tokens, d)
        self.rows = local_batch_rows(sharding, shape)
        for hb in self.batches(position):
            yield {h: global_batch(a, sharding, shape) for h, a in hb.arrays.items()}, hb.position

    def position_to_checkpoint(self, position: Position | None) -> tuple[dict, dict[str, np.ndarray]]:
        position = position or Position()
        return position.to_json(), {f"data/carry/{h}": a for h, a in position.carry.items()}

    def position_from_checkpoint(self, doc: dict, arrays: dict[str, np.ndarray]) -> Position:
        carry = {h: arrays[f"data/carry/{h}"] for h in self.hooks if f"data/carry/{h}" in arrays}
        return Position(int(doc["epoch"]), int(doc["window"]), int(doc["batch"]), carry)


def _as(x: np.ndarray, dtype) -> np.ndarray:
    return x if x.dtype == dtype else x.astype(dtype)


def _bf16():
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)
