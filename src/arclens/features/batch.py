"""A batch of tokens as the features pass sees it: activations plus each token's roles and ids.

Both sources (a store, or the model on the fly) build these: whole samples, laid out one after
another (a store) or one per row of a padded ``[B, T]`` batch (the model). Everything per token is
a flat array over the batch's N slots; padding slots have ``valid = 0`` and roles -1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from arclens.features.cells import SampleCells, lookup_roles
from arclens.features.device import ROLE_FIELDS
from arclens.features.hashing import hash_tokens, key_hash
from arclens.features.layout import ROLES_PER_CELL, cell_role_columns

COLUMNS = ("position", "token_id", "grid", "row", "col")


@dataclass
class BatchSample:
    """One sample of a batch: where its tokens are, and what the output files need of it."""

    rank: int  # index of its key in the sorted list of every key of the source
    group: int  # its (task, test index): the unit of augmentation consistency
    start: int  # its tokens are slots [start, end) of the batch
    end: int
    info: dict  # the store's sample-table entry: key, task_id, test_index, augmentation, ...
    columns: dict[str, np.ndarray]  # COLUMNS, per token (views; copied when an example keeps them)
    cells: SampleCells
    unique_cells: np.ndarray  # int64: the original cells its cell tokens show, each once
    multi_token_cells: bool  # some cell is shown as several tokens (RepeatNumberEncoder)


@dataclass
class Batch:
    x: object  # [N, d] numpy or device array
    valid: np.ndarray  # float32 [N]
    roles: dict[str, np.ndarray]  # ROLE_FIELDS -> int8 [N]
    cell: np.ndarray  # int64 [N]: original cell code, -1
    role_cols: np.ndarray  # int16 [N, ROLES_PER_CELL]: layout.role_columns, -1 where none
    order: np.ndarray  # int64 [N]: (key rank << 32) | position, the tie-break order
    token_hash: np.ndarray  # uint64 [N]
    sample_of: np.ndarray  # int32 [N]: index into `samples`, -1 for padding
    samples: list[BatchSample] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.valid)


class BatchBuilder:
    """The per-token arrays of a batch of N slots: samples are added (where their tokens go, and
    what the files need of them), and `build` looks up every token's roles and ids at once, over
    the whole batch (a few dozen numpy calls a batch, not a few dozen a sample: the source runs on
    every token of the pass)."""

    def __init__(self, size: int):
        self.size = size
        self._added: list[tuple[int, int, int, dict, dict, SampleCells]] = []

    def add(self, start: int, rank: int, group: int, info: dict, columns: dict, cells: SampleCells) -> None:
        """The sample's tokens go to slots [start, start + n), after those of the samples added
        before it: `columns` holds COLUMNS, per token."""
        self._added.append((start, rank, group, info, columns, cells))

    def build(self, x) -> Batch:
        size, added = self.size, self._added
        valid = np.zeros(size, np.float32)
        roles = {name: np.full(size, -1, np.int8) for name in ROLE_FIELDS}
        cell = np.full(size, -1, np.int64)
        role_cols = np.full((size, ROLES_PER_CELL), -1, np.int16)
        order = np.full(size, np.iinfo(np.int64).max, np.int64)
        token_hash = np.zeros(size, np.uint64)
        sample_of = np.full(size, -1, np.int32)
        if not added:
            return Batch(x, valid, roles, cell, role_cols, order, token_hash, sample_of, [])
        lengths = np.asarray([len(a[4]["position"]) for a in added], np.int64)
        starts = np.asarray([a[0] for a in added], np.int64)
        ends = starts + lengths
        if starts[0] < 0 or ends[-1] > size or (len(added) > 1 and (starts[1:] < ends[:-1]).any()):
            raise ValueError(f"samples overlap or overrun the batch's {size} slots")
        # Every token of the batch, samples end to end, and the slot each goes to.
        total = int(lengths.sum())
        column = {c: np.concatenate([a[4][c] for a in added]) for c in ("position", "grid", "row", "col")}
        index = np.repeat(np.arange(len(added), dtype=np.int32), lengths)
        first = np.cumsum(lengths) - lengths
        contiguous = bool((starts == first).all())
        slots = slice(0, total) if contiguous else np.repeat(starts - first, lengths) + np.arange(total)

        found = lookup_roles([a[5] for a in added], lengths, column["grid"], column["row"], column["col"])
        # Only the cell tokens' roles are written: every other slot keeps -1.
        cell_slots = found.at if contiguous else found.at + (starts - first)[found.sample]
        valid[slots] = 1
        for name in ROLE_FIELDS:
            roles[name][cell_slots] = getattr(found, name)
        cell[cell_slots] = found.cell
        role_cols[cell_slots] = cell_role_columns(*(getattr(found, name) for name in ROLE_FIELDS))
        positions = column["position"].astype(np.int64)
        ranks = np.asarray([a[1] for a in added], np.int64)
        order[slots] = (ranks[index] << np.int64(32)) | positions
        token_hash[slots] = hash_tokens(np.asarray([key_hash(a[3]["key"]) for a in added], np.uint64)[index],
                                        positions)
        sample_of[slots] = index

        # Each sample's original cells, each once: one sort of (sample, cell) over the batch.
        pairs = np.sort((found.sample << np.int64(32)) | found.cell)
        if len(pairs):
            pairs = pairs[np.r_[True, pairs[1:] != pairs[:-1]]]
        bounds = np.searchsorted(pairs >> np.int64(32), np.arange(len(added) + 1))
        cells_shown = np.bincount(found.sample, minlength=len(added))
        mask = np.int64(2**32 - 1)
        samples = []
        for i, (start, rank, group, info, columns, cells) in enumerate(added):
            unique_cells = pairs[bounds[i]:bounds[i + 1]] & mask
            samples.append(BatchSample(rank, group, int(start), int(ends[i]), info, columns, cells, unique_cells,
                                       bool(len(unique_cells) < cells_shown[i])))
        return Batch(x, valid, roles, cell, role_cols, order, token_hash, sample_of, samples)
