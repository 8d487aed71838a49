"""The role columns every token is counted under, and the coverage properties built on them.

A token's roles are a few small integers (grid kind, original and shown colour, row, col,
border; -1 for a token that is not a cell). On the device they become one row of a one-hot
matrix with the columns below, so that the activation mass and the firing counts by role are one
matmul each (`features/device.py`). Everything that names a column (the shares, the coverage
properties, the files) reads it from here.
"""

from __future__ import annotations

from dataclasses import dataclass

GRID_KINDS = ("train_input", "train_output", "test_input", "answer")
N_COLOURS = 10
MAX_SIDE = 30  # ARC grids are 1..30 on a side


@dataclass(frozen=True)
class Block:
    name: str
    start: int
    size: int

    @property
    def stop(self) -> int:
        return self.start + self.size

    @property
    def slice(self) -> slice:
        return slice(self.start, self.stop)


def _blocks() -> dict[str, Block]:
    sizes = [("cell", 1), ("grid_kind", len(GRID_KINDS)), ("colour", N_COLOURS), ("shown_colour", N_COLOURS),
             ("row", MAX_SIDE), ("col", MAX_SIDE), ("border", 1), ("colour_grid", len(GRID_KINDS) * N_COLOURS)]
    out, start = {}, 0
    for name, size in sizes:
        out[name] = Block(name, start, size)
        start += size
    return out


BLOCKS = _blocks()
N_ROLE_COLUMNS = BLOCKS["colour_grid"].stop


def colour_grid_index(kind: int, colour: int) -> int:
    """Column of the conjunction (colour, grid kind) inside the colour_grid block."""
    return kind * N_COLOURS + colour


def _property_columns() -> tuple[list[tuple[str, str, int]], list[tuple[str, str, int]]]:
    """(name, family, role column) of the coverage properties, and of the shown-colour ones."""
    b = BLOCKS
    props = [(f"colour={c}", "colour", b["colour"].start + c) for c in range(N_COLOURS)]
    props += [(f"grid={k}", "grid", b["grid_kind"].start + i) for i, k in enumerate(GRID_KINDS)]
    props += [(f"row={r}", "row", b["row"].start + r) for r in range(MAX_SIDE)]
    props += [(f"col={c}", "col", b["col"].start + c) for c in range(MAX_SIDE)]
    props += [("border", "border", b["border"].start)]
    props += [(f"colour={c}&grid={k}", "colour&grid", b["colour_grid"].start + colour_grid_index(i, c))
              for i, k in enumerate(GRID_KINDS) for c in range(N_COLOURS)]
    shown = [(f"shown_colour={c}", "shown_colour", b["shown_colour"].start + c) for c in range(N_COLOURS)]
    return props, shown


PROPERTIES, SHOWN_PROPERTIES = _property_columns()


ROLES_PER_CELL = 8  # a cell token is in exactly one column of each block


def role_columns(kind, colour, shown, row, col, border):
    """int16 [n, ROLES_PER_CELL]: the role columns each token counts in (-1: none; a token that
    is not a cell has none). The same columns as device.role_matrix's one-hot rows."""
    import numpy as np

    kind = np.asarray(kind)
    out = np.full((len(kind), ROLES_PER_CELL), -1, np.int16)
    at = np.flatnonzero(kind >= 0)
    out[at] = cell_role_columns(*(np.asarray(a)[at] for a in (kind, colour, shown, row, col, border)))
    return out


def cell_role_columns(kind, colour, shown, row, col, border):
    """`role_columns` of cell tokens only (every field >= 0). Made in int16: every column fits."""
    import numpy as np

    k, colour = np.asarray(kind).astype(np.int16), np.asarray(colour).astype(np.int16)
    b = BLOCKS
    cols = np.empty((len(k), ROLES_PER_CELL), np.int16)
    cols[:, 0] = b["cell"].start
    cols[:, 1] = b["grid_kind"].start + k
    cols[:, 2] = b["colour"].start + colour
    cols[:, 3] = b["shown_colour"].start + np.asarray(shown).astype(np.int16)
    cols[:, 4] = b["row"].start + np.asarray(row).astype(np.int16)
    cols[:, 5] = b["col"].start + np.asarray(col).astype(np.int16)
    cols[:, 6] = np.where(np.asarray(border) == 1, b["border"].start, -1)
    cols[:, 7] = b["colour_grid"].start + k * N_COLOURS + colour
    return cols
