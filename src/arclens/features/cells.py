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
from arclens.features.layout import GRID_KINDS, MAX_SIDE, N_COLOURS
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
    """Per token; -1 where the token is not a cell."""

    kind: np.ndarray  # int8: index into GRID_KINDS
    colour: np.ndarray  # int8: the cell's colour in the original task
    shown: np.ndarray  # int8: the colour as the prompt shows it
    row: np.ndarray  # int8: shown row and column
    col: np.ndarray
    border: np.ndarray  # int8: 1 border, 0 interior
    cell: np.ndarray  # int64: original cell code (original grid * 900 + row * 30 + col)


@dataclass(frozen=True)
class CellRoles:
    """The roles of the cell tokens among some tokens: `at` their indices, the rest per cell token."""

    at: np.ndarray  # int64
    sample: np.ndarray  # int64: which of the samples looked up it belongs to
    kind: np.ndarray  # (each field as in TokenRoles, int64, never -1)
    colour: np.ndarray
    shown: np.ndarray
    row: np.ndarray
    col: np.ndarray
    border: np.ndarray
    cell: np.ndarray

    def tokens(self, n: int) -> TokenRoles:
        """Every one of the n tokens' roles (-1 where not a cell)."""

        def put(values: np.ndarray, dtype) -> np.ndarray:
            out = np.full(n, -1, dtype)
            out[self.at] = values
            return out

        fields = {f: put(getattr(self, f), np.int8) for f in ("kind", "colour", "shown", "row", "col", "border")}
        return TokenRoles(**fields, cell=put(self.cell, np.int64))


@functools.lru_cache(maxsize=64)
def _kinds(n_train: int) -> np.ndarray:
    out = np.asarray([grid_kind(x, n_train) for x in range(2 * n_train + 2)], np.int64)
    out.flags.writeable = False
    return out


class SampleCells:
    """The grids one sample shows, from its task's grids and its augmentation.

    Making one is cheap (the pass makes one per sample); the shown grids are made when first
    asked for (`shown`: an example's lines), and the tokens' roles are looked up for a whole
    batch of samples at once (`lookup_roles`)."""

    def __init__(self, key: str, grids: list[np.ndarray | None], aug: Augmentation):
        self.key, self.aug, self.grids = key, aug, grids
        self.n_train = len(aug.train_order)
        if len(grids) != 2 * self.n_train + 2:
            raise UserError(f"sample {key}: its augmentation has {self.n_train} train examples but the task "
                            f"has {len(grids) // 2 - 1}; the tasks are not the ones this store was made from")

    @property
    def n_numbers(self) -> int:
        return len(self.grids)

    def original(self, number: int) -> np.ndarray | None:
        """The task's grid that shown grid `number` shows (None: an answer the tasks do not hold)."""
        return self.grids[original_number(number, self.aug)]

    @functools.cached_property
    def shown(self) -> dict[int, np.ndarray]:
        """Shown grid number -> the grid as the prompt shows it (= aug.apply_array of its original)."""
        colour_map = np.asarray(self.aug.color_map, np.int64)
        out = {}
        for number in range(self.n_numbers):
            original = self.original(number)
            if original is not None:
                index = _shown_layout(bool(self.aug.hflip), int(self.aug.rot90), *original.shape)[0]
                out[number] = colour_map[original.ravel()[index]]
        return out

    def roles(self, grid: np.ndarray, row: np.ndarray, col: np.ndarray) -> TokenRoles:
        """The roles of this sample's tokens (one sample's `lookup_roles`)."""
        return lookup_roles([self], np.asarray([len(grid)]), grid, row, col).tokens(len(grid))

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


def lookup_roles(samples: list[SampleCells], lengths: np.ndarray, grid, row, col) -> CellRoles:
    """The roles of the cell tokens of several samples laid end to end (``lengths[i]`` tokens of
    ``samples[i]``), from their stored (grid, row, col).

    It runs on every token of the pass, in the source's thread, so it is a few gathers over the
    whole batch's cell tokens: per shown grid of each sample, a row of small tables (the grid's
    kind, shown shape, and where its layout and its original colours start in two tables
    concatenated for the batch); per cell token, its shown cell's place in the layout table, which
    holds the original cell and border (`_shown_layout`, the numpy flips and rotations of
    `Augmentation.apply_array`), and from there the original colour and the shown one."""
    grid = np.asarray(grid)
    lengths = np.asarray(lengths, np.int64)
    if len(lengths) != len(samples) or int(lengths.sum()) != len(grid):
        raise ValueError(f"{len(samples)} samples of {lengths.sum()} tokens in all, for {len(grid)} tokens")
    starts = np.cumsum(lengths) - lengths
    # Per (sample, shown grid number): its row in the tables below.
    kind, height, width, layout_at, colours_at, cell_base = [], [], [], [], [], []
    base = np.empty(len(samples), np.int64)
    layouts: dict[tuple, int] = {}
    layout_parts: list[tuple] = []
    colour_parts: dict[int, tuple[int, np.ndarray]] = {}
    n_layout = n_colours = 0
    for i, s in enumerate(samples):
        base[i] = len(kind)
        kind.extend(_kinds(s.n_train).tolist())
        hflip, rot90 = bool(s.aug.hflip), int(s.aug.rot90)
        for number in range(s.n_numbers):
            g0 = original_number(number, s.aug)
            original = s.grids[g0]
            if original is None:
                height.append(0), width.append(0), layout_at.append(-1), colours_at.append(0), cell_base.append(0)
                continue
            h, w = original.shape
            key = (hflip, rot90, h, w)
            at = layouts.get(key)
            if at is None:
                at = layouts[key] = n_layout
                layout_parts.append(_shown_layout(*key))
                n_layout += h * w
            part = colour_parts.get(id(original))
            if part is None:
                part = colour_parts[id(original)] = (n_colours, original)
                n_colours += original.size
            sh, sw = (w, h) if rot90 % 2 else (h, w)
            height.append(sh), width.append(sw), layout_at.append(at), colours_at.append(part[0])
            cell_base.append(g0 * CELL_CODE_GRID)
    n_numbers = np.asarray([s.n_numbers for s in samples], np.int64)
    kind, height, width = (np.asarray(a, np.int64) for a in (kind, height, width))
    layout_at, colours_at, cell_base = (np.asarray(a, np.int64) for a in (layout_at, colours_at, cell_base))

    at = np.flatnonzero(grid >= 0)
    sample = np.searchsorted(starts, at, side="right") - 1
    g, r, c = (np.asarray(a)[at].astype(np.int64) for a in (grid, row, col))
    known = g < n_numbers[sample]
    sg = base[sample] + np.where(known, g, 0)
    ok = known & (layout_at[sg] >= 0) & (r >= 0) & (r < height[sg]) & (c >= 0) & (c < width[sg])
    if not ok.all():
        j = int(np.flatnonzero(~ok)[0])
        s = samples[sample[j]]
        shape = f"{height[sg[j]]}x{width[sg[j]]}" if known[j] and layout_at[sg[j]] >= 0 else "absent"
        raise UserError(f"sample {s.key}: token {at[j] - starts[sample[j]]} is cell (grid {g[j]}, row {r[j]}, "
                        f"col {c[j]}) but that grid of the task is {shape}; the tasks are not the ones this store "
                        "was made from (pass the right --tasks, and --solutions for answers)")
    if layout_parts:
        index = np.concatenate([p[0].ravel() for p in layout_parts])
        original_rc = np.concatenate([p[1] for p in layout_parts])
        border = np.concatenate([p[2] for p in layout_parts])
        colours = np.concatenate([o.ravel() for _, o in colour_parts.values()])
    else:
        index = original_rc = border = colours = np.zeros(0, np.int64)
    colour_maps = np.asarray([s.aug.color_map for s in samples], np.int64).reshape(len(samples), N_COLOURS)
    shown_at = layout_at[sg] + r * width[sg] + c
    colour = colours[colours_at[sg] + index[shown_at]]

    return CellRoles(at=at, sample=sample, kind=kind[sg], colour=colour, shown=colour_maps[sample, colour],
                     row=r, col=c, border=border[shown_at], cell=cell_base[sg] + original_rc[shown_at])
