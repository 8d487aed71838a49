"""From a stored token's (grid, row, col) to the cell's roles: grid kind, colours, border, and the
original cell it shows.

A store records each cell token's grid number and its row and column *as the prompt shows them*
(SPEC.md section 3). The colours and the way back to the task come from the task itself and the
sample's augmentation (`prompts.Augmentation`: hflip first, then rot90 k times counter-clockwise,
then colours; shown example j is original example `train_order[j]`). The shown position of an
original cell is found by sending an index grid through the same numpy flips and rotations as
`Augmentation.apply_array`, so the two can never disagree (the property tests check it).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np

from arclens.errors import UserError
from arclens.features.layout import GRID_KINDS, MAX_SIDE
from arclens.prompts import Augmentation

CELL_CODE_GRID = MAX_SIDE * MAX_SIDE  # original cell code = original grid * 900 + row * 30 + col


def grid_kind(number: int, n_train: int) -> int:
    """Index into GRID_KINDS of grid `number` of a prompt with `n_train` examples (SPEC.md 3)."""
    if number < 2 * n_train:
        return number % 2
    return 2 if number == 2 * n_train else 3


def grid_label(number: int, n_train: int) -> str:
    """The role as a person reads it, examples numbered as the prompt shows them."""
    kind = grid_kind(number, n_train)
    if kind < 2:
        return f"train {'input' if kind == 0 else 'output'} {number // 2 + 1}"
    return "test input" if kind == 2 else "answer"


def original_number(number: int, aug: Augmentation) -> int:
    """The original task's grid number of shown grid `number` (train examples through train_order)."""
    n = len(aug.train_order)
    if number < 2 * n:
        return 2 * aug.train_order[number // 2] + number % 2
    return number


def shown_index_map(aug: Augmentation, shape: tuple[int, int]) -> np.ndarray:
    """[h', w'] array: the flat index, in the original grid of `shape`, of each shown cell."""
    return _shown_layout(bool(aug.hflip), int(aug.rot90), int(shape[0]), int(shape[1]))[0]


@functools.lru_cache(maxsize=4096)
def _shown_layout(hflip: bool, rot90: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What a grid of shape (h, w) shown under a flip and a rotation looks like, whatever its
    colours (a store has a few hundred such layouts, and thousands of samples): the shown cells'
    flat index in the original (`shown_index_map`), their original ``row * MAX_SIDE + col``, and
    whether each shown cell is on the border. Read-only: shared by every sample."""
    a = np.arange(h * w).reshape(h, w)
    if hflip:
        a = np.flip(a, axis=1)
    index = np.ascontiguousarray(np.rot90(a, k=rot90))
    r0, c0 = np.divmod(index.ravel(), w)
    sh, sw = index.shape
    rows, cols = np.divmod(np.arange(sh * sw), sw)
    border = (rows == 0) | (rows == sh - 1) | (cols == 0) | (cols == sw - 1)
    out = (index, r0 * MAX_SIDE + c0, border)
    for a in out:
        a.flags.writeable = False
    return out


def shown_to_original(aug: Augmentation, shape: tuple[int, int], rows, cols) -> tuple[np.ndarray, np.ndarray]:
    """Original (row, col) of shown cells (rows[i], cols[i]) of a grid whose original shape is `shape`."""
    flat = shown_index_map(aug, shape)[np.asarray(rows), np.asarray(cols)]
    return np.divmod(flat, shape[1])


def task_grids(task) -> list[list[np.ndarray | None]]:
    """Per test index, the task's grids by original grid number (test output None if unknown)."""
    train = [np.asarray(g, dtype=np.int64) for e in task.train for g in (e.input, e.output)]
    return [train + [np.asarray(t.input, dtype=np.int64),
                     None if t.output is None else np.asarray(t.output, dtype=np.int64)] for t in task.test]


@functools.lru_cache(maxsize=256)
def prompt_slots(version: str, n_train: int, with_answer: bool) -> tuple[int, ...]:
    """The grid numbers a prompt of `version` shows, in order (the prompt's own templates, so a
    version that shows only inputs or only outputs lists only those)."""
    from arclens.prompts.chat import answer_grid_number, grid_numbers, placeholder
    from arclens.prompts.templates import get_prompt_version

    v = get_prompt_version(version)
    train = [{"input": placeholder(2 * i), "output": placeholder(2 * i + 1)} for i in range(n_train)]
    text = v.user.render(train_samples=train, test_input=placeholder(grid_numbers(n_train)["test_input"]))
    if with_answer:
        text += v.answer.render(output=placeholder(answer_grid_number(v, n_train)))
    return tuple(int(m) for m in re.findall("\ue000(\\d+)\ue001", text))


@dataclass(frozen=True)
class TokenRoles:
    """Per token of one sample; -1 where the token is not a cell."""

    kind: np.ndarray  # int8: index into GRID_KINDS
    colour: np.ndarray  # int8: the cell's colour in the original task
    shown: np.ndarray  # int8: the colour as the prompt shows it
    row: np.ndarray  # int8: shown row and column
    col: np.ndarray
    border: np.ndarray  # int8: 1 border, 0 interior
    cell: np.ndarray  # int64: original cell code (original grid * 900 + row * 30 + col)


class SampleCells:
    """The grids one sample shows and the lookup from its tokens' (grid, row, col) to their roles."""

    def __init__(self, key: str, grids: list[np.ndarray | None], aug: Augmentation):
        self.key, self.aug = key, aug
        self.n_train = len(aug.train_order)
        n_numbers = 2 * self.n_train + 2
        if len(grids) != n_numbers:
            raise UserError(f"sample {key}: its augmentation has {self.n_train} train examples but the task "
                            f"has {len(grids) // 2 - 1}; the tasks are not the ones this store was made from")
        self.shown: dict[int, np.ndarray] = {}
        parts = []  # per shown grid number: flat lookup arrays
        self.offset = np.full(n_numbers, -1, np.int64)
        self.width = np.zeros(n_numbers, np.int64)
        self.height = np.zeros(n_numbers, np.int64)
        start = 0
        colour_map = np.asarray(aug.color_map, np.int64)
        for number in range(n_numbers):
            g0 = original_number(number, aug)
            original = grids[g0]
            if original is None:
                continue
            index, original_rc, border = _shown_layout(bool(aug.hflip), int(aug.rot90), *original.shape)
            colours = original.ravel()[index.ravel()]
            shown = colour_map[colours].reshape(index.shape)  # (= aug.apply_array(original))
            h, w = shown.shape
            parts.append((shown.ravel(), colours, g0 * CELL_CODE_GRID + original_rc, border))
            self.shown[number] = shown
            self.offset[number], self.height[number], self.width[number] = start, h, w
            start += h * w
        self._shown = np.concatenate([p[0] for p in parts]).astype(np.int8)
        self._colour = np.concatenate([p[1] for p in parts]).astype(np.int8)
        self._cell = np.concatenate([p[2] for p in parts]).astype(np.int64)
        self._border = np.concatenate([p[3] for p in parts]).astype(np.int8)

    def roles(self, grid: np.ndarray, row: np.ndarray, col: np.ndarray) -> TokenRoles:
        # (Only the cell tokens are looked up, gathered once: every array starts at -1 and gets
        # the cells' values put in. It runs on every token of the pass, in the source's thread.)
        grid = np.asarray(grid)
        n = len(grid)
        at = np.flatnonzero(grid >= 0)
        g, r, c = (np.asarray(a)[at].astype(np.int64) for a in (grid, row, col))
        known = g < len(self.width)
        gk = np.where(known, g, 0)
        ok = known & (self.offset[gk] >= 0) & (r >= 0) & (r < self.height[gk]) & (c >= 0) & (c < self.width[gk])
        if not ok.all():
            j = int(np.flatnonzero(~ok)[0])
            shape = f"{self.height[g[j]]}x{self.width[g[j]]}" if known[j] and self.offset[g[j]] >= 0 else "absent"
            raise UserError(f"sample {self.key}: token {at[j]} is cell (grid {g[j]}, row {r[j]}, col {c[j]}) "
                            f"but that grid of the task is {shape}; the tasks are not the ones this store was "
                            "made from (pass the right --tasks, and --solutions for answers)")
        flat = self.offset[g] + r * self.width[g] + c

        def put(values: np.ndarray, dtype) -> np.ndarray:
            out = np.full(n, -1, dtype)
            out[at] = values
            return out

        kinds = np.asarray([grid_kind(x, self.n_train) for x in range(len(self.width))], np.int8)
        return TokenRoles(
            kind=put(kinds[g], np.int8),
            colour=put(self._colour[flat], np.int8),
            shown=put(self._shown[flat], np.int8),
            row=put(r, np.int8),
            col=put(c, np.int8),
            border=put(self._border[flat], np.int8),
            cell=put(self._cell[flat], np.int64),
        )

    def grids_json(self, slots: tuple[int, ...]) -> list[dict]:
        """samples.jsonl `grids`: every shown grid in `slots`, in grid-number order."""
        out = []
        for number in sorted(set(slots)):
            if number not in self.shown:
                continue
            shown = self.shown[number]
            out.append({"grid": number, "kind": GRID_KINDS[grid_kind(number, self.n_train)],
                        "label": grid_label(number, self.n_train),
                        "example": number // 2 if number < 2 * self.n_train else None,
                        "original_grid": original_number(number, self.aug),
                        "height": int(shown.shape[0]), "width": int(shown.shape[1]), "cells": shown.tolist()})
        return out
