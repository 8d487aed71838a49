"""The ARC task model: immutable grids, examples and tasks.

A grid is a tuple of row tuples so that it is hashable (voting keys on it) and cannot be changed
behind a sample's back; `json` writes it as lists, the ARC layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Grid = tuple[tuple[int, ...], ...]


def as_grid(rows: Sequence[Sequence[int]]) -> Grid:
    """Normalise lists, tuples or a 2-D numpy array into a Grid (no validation)."""
    return tuple(tuple(int(v) for v in row) for row in rows)


def grid_to_json(grid: Grid | None):
    return None if grid is None else [list(r) for r in grid]


@dataclass(frozen=True)
class Example:
    input: Grid
    output: Grid | None = None  # test outputs may be unknown

    def to_json(self) -> dict:
        d = {"input": grid_to_json(self.input)}
        if self.output is not None:
            d["output"] = grid_to_json(self.output)
        return d


@dataclass(frozen=True)
class Task:
    task_id: str
    train: tuple[Example, ...]
    test: tuple[Example, ...]

    def to_json(self) -> dict:
        """The ARC layout, without the id: {"train": [...], "test": [...]}."""
        return {"train": [e.to_json() for e in self.train], "test": [e.to_json() for e in self.test]}
