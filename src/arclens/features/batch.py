"""A batch of tokens as the features pass sees it: activations plus each token's roles and ids.

Both sources (a store, or the model on the fly) build these: whole samples, laid out one after
another (a store) or one per row of a padded ``[B, T]`` batch (the model). Everything per token is
a flat array over the batch's N slots; padding slots have ``valid = 0`` and roles -1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from arclens.features.cells import SampleCells, TokenRoles
from arclens.features.device import ROLE_FIELDS
from arclens.features.hashing import token_hashes
from arclens.features.layout import ROLES_PER_CELL, role_columns

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
    """Per-token arrays of a batch of N slots, filled sample by sample."""

    def __init__(self, size: int):
        self.size = size
        self.valid = np.zeros(size, np.float32)
        self.roles = {name: np.full(size, -1, np.int8) for name in ROLE_FIELDS}
        self.cell = np.full(size, -1, np.int64)
        self.role_cols = np.full((size, ROLES_PER_CELL), -1, np.int16)
        self.order = np.full(size, np.iinfo(np.int64).max, np.int64)
        self.token_hash = np.zeros(size, np.uint64)
        self.sample_of = np.full(size, -1, np.int32)
        self.samples: list[BatchSample] = []

    def add(self, start: int, rank: int, group: int, info: dict, columns: dict, cells: SampleCells,
            roles: TokenRoles) -> BatchSample:
        n = len(columns["position"])
        end = start + n
        sl = slice(start, end)
        self.valid[sl] = 1
        for name in ROLE_FIELDS:
            self.roles[name][sl] = getattr(roles, name)
        self.cell[sl] = roles.cell
        self.role_cols[sl] = role_columns(*(getattr(roles, name) for name in ROLE_FIELDS))
        positions = np.asarray(columns["position"], np.int64)
        self.order[sl] = (np.int64(rank) << np.int64(32)) | positions
        self.token_hash[sl] = token_hashes(info["key"], positions)
        self.sample_of[sl] = len(self.samples)
        cell_tokens = np.sort(roles.cell[roles.cell >= 0])  # (np.unique, by a sort: its hash table is slower here)
        unique_cells = cell_tokens[np.r_[True, cell_tokens[1:] != cell_tokens[:-1]]] if len(cell_tokens) else cell_tokens
        s = BatchSample(rank, group, start, end, info, columns, cells, unique_cells,
                        len(unique_cells) < len(cell_tokens))
        self.samples.append(s)
        return s

    def build(self, x) -> Batch:
        return Batch(x, self.valid, self.roles, self.cell, self.role_cols, self.order, self.token_hash,
                     self.sample_of, self.samples)
