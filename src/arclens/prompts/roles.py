"""Token roles: which tokens are one cell of a grid, which grid, and the cell's row and column.

The encoder reports the character span of every cell (encoders.py `render`), the prompt assembly
shifts them to the prompt's coordinates (render.py), and the tokenizer reports the character span
of every token (`return_offsets_mapping`). A token is a cell when its span is non-empty and lies
inside that one cell's span. With Qwen's tokenizer every digit is its own token, so for encoders
that print one character per cell each cell is exactly one token. For `RepeatNumberEncoder(n)`
each of the n tokens of a cell gets that cell; a token that covers several cells, or a cell and
something else (possible when BPE merges ReplaceNumberEncoder's letters), is -1.

Text that is not a rendering of a grid (what a model generated) has no `render`; its cells are
the ones the encoder's own reading finds (encoders.py `locate_cells`, `text_cells` here), which on
a rendered grid are exactly `render`'s, and tokens get their roles by the same `token_roles`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from arclens.prompts.encoders import GridEncoder


@dataclass(frozen=True)
class Cells:
    """Every cell shown in a prompt, sorted by `start` (spans never overlap)."""

    start: np.ndarray  # int64 [m] character offsets into the prompt text
    end: np.ndarray
    grid: np.ndarray  # int16 [m] grid number (SPEC.md section 3)
    row: np.ndarray  # int16 [m] row and column as shown (after augmentation)
    col: np.ndarray

    @staticmethod
    def concatenate(parts: list[Cells]) -> Cells:
        if not parts:
            empty = np.zeros(0, np.int64)
            return Cells(empty, empty, empty.astype(np.int16), empty.astype(np.int16), empty.astype(np.int16))
        return Cells(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in ("start", "end", "grid", "row", "col"))
        )


def token_roles(offsets: np.ndarray, cells: Cells) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(grid, row, col) int16 [n] for tokens with character spans `offsets` [n, 2]; -1 off-grid."""
    n = len(offsets)
    grid = np.full(n, -1, np.int16)
    row = np.full(n, -1, np.int16)
    col = np.full(n, -1, np.int16)
    if n == 0 or len(cells.start) == 0:
        return grid, row, col
    offsets = np.asarray(offsets, dtype=np.int64).reshape(n, 2)
    tok_start, tok_end = offsets[:, 0], offsets[:, 1]
    # The last cell starting at or before the token's start is the only one that can contain it.
    idx = np.searchsorted(cells.start, tok_start, side="right") - 1
    safe = np.clip(idx, 0, None)
    inside = (idx >= 0) & (tok_end > tok_start) & (tok_end <= cells.end[safe])
    grid[inside] = cells.grid[safe[inside]]
    row[inside] = cells.row[safe[inside]]
    col[inside] = cells.col[safe[inside]]
    return grid, row, col


def text_cells(encoder: GridEncoder, text: str, grid_number: int, offset: int = 0) -> Cells:
    """The cells `encoder` reads in any `text` (encoders.py `locate_cells`: ragged or cut short
    included), all numbered `grid_number`, at character offsets shifted by `offset`."""
    spans, rows, cols, _ = encoder.locate_cells(text)
    return Cells(
        spans[:, 0] + offset, spans[:, 1] + offset, np.full(len(rows), grid_number, np.int16), rows, cols
    )
