"""arc24's seven grid encoders (ironbar/arc24, scripts/arc24/encoders.py), re-implemented.

`to_text` prints exactly what arc24 prints. `to_grid` reads text back the way arc24 reads it, but
returns an immutable Grid and raises `GridParseError` (a ValueError) instead of returning a ragged
list or failing with whatever exception Python happened to raise; `parse_grid` in output.py turns
that into "no grid".

Beyond arc24, every encoder also reports *where* each cell lands in its text (`render`): one
`[start, end)` character span per cell, row-major. Token roles (roles.py) are derived from these
spans and the tokenizer's offsets, never by guessing from the text.

The way back is one reading per encoder (`_read`): which lines of a text are grid lines and how a
line splits into cells, with every cell's character span kept. `to_grid` is that reading, strict
(arc24's rules, which fail on any malformed text); `locate_cells` is the same reading, lenient,
for the cells a model actually wrote (token roles of generated text, roles.py `text_cells`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from arclens.data.tasks import Grid


class GridParseError(ValueError):
    """Text that does not decode into a rectangular grid of colours 0-9."""


def _check_rectangular(rows: list[tuple[int, ...]]) -> Grid:
    """arc24 leaves this to `validate_grid` after decoding; we fail early with the same outcome."""
    if not rows or not rows[0]:
        raise GridParseError("empty grid")
    width = len(rows[0])
    for row in rows:
        if len(row) != width:
            raise GridParseError("ragged grid: rows of different lengths")
        for v in row:
            if not 0 <= v <= 9:
                raise GridParseError(f"colour {v} is outside 0-9")
    return tuple(rows)


def _to_int(token: str) -> int:
    # int() exactly as arc24 uses it (it accepts surrounding spaces and any Unicode decimal digit).
    try:
        return int(token)
    except ValueError:
        raise GridParseError(f"not a number: {token!r}") from None


def _colour(token: str, strict: bool) -> int | None:
    """The colour a cell's text reads as: arc24's int() (strict: raises, range checked later by
    `_check_rectangular`), or None where that is not a colour 0-9 (lenient)."""
    if strict:
        return _to_int(token)
    try:
        value = int(token)
    except ValueError:
        return None
    return value if 0 <= value <= 9 else None


class _Chars:
    """A piece of text and, for each of its characters, its offset in the text it was cut from
    (-1 for characters a reader put there itself: the line breaks it joins lines with). The string
    methods are Python's own, applied to both, so a reading keeps every cell's position."""

    __slots__ = ("pos", "s")

    def __init__(self, s: str, pos):
        self.s, self.pos = s, pos

    @classmethod
    def of(cls, text: str) -> _Chars:
        return cls(text, range(len(text)))

    @classmethod
    def new(cls, s: str) -> _Chars:
        return cls(s, [-1] * len(s))

    def __getitem__(self, sl: slice) -> _Chars:
        return _Chars(self.s[sl], self.pos[sl])

    def __len__(self) -> int:
        return len(self.s)

    def strip(self) -> _Chars:
        start = len(self.s) - len(self.s.lstrip())
        return self[start : max(start, len(self.s.rstrip()))]

    def splitlines(self) -> list[_Chars]:
        out, start = [], 0
        for piece in self.s.splitlines(keepends=True):
            out.append(self[start : start + len(piece.splitlines()[0])])
            start += len(piece)
        return out

    def split(self, sep: str, maxsplit: int = -1) -> list[_Chars]:
        out, start = [], 0
        for part in self.s.split(sep, maxsplit):
            out.append(self[start : start + len(part)])
            start += len(part) + len(sep)
        return out

    def translate(self, table: dict) -> _Chars:
        """Only for one-character-for-one-character tables (positions do not move)."""
        return _Chars(self.s.translate(table), self.pos)

    @staticmethod
    def concat(parts: list[_Chars]) -> _Chars:
        return _Chars("".join(p.s for p in parts), [i for p in parts for i in p.pos])

    def span(self) -> tuple[int, int]:
        """[start, end) in the original text; cells are always contiguous there (one line)."""
        return self.pos[0], self.pos[-1] + 1


# A reading of a text: per grid line, per cell slot, (the slot's characters, its colour or None).
Reading = list[list[tuple[_Chars, int | None]]]


class GridEncoder(ABC):
    """Base class. `expression` is the arc24 spelling, e.g. "GridCodeBlockEncoder(MinimalGridEncoder())"."""

    @abstractmethod
    def to_text(self, grid: Grid) -> str: ...

    def to_grid(self, text: str) -> Grid:
        """The grid in `text`, read as arc24 reads it; GridParseError for anything malformed."""
        return _check_rectangular([tuple(v for _, v in line) for line in self._read(_Chars.of(text), True)])

    @abstractmethod
    def _read(self, text: _Chars, strict: bool) -> Reading:
        """The grid lines of `text` and their cell slots, as `to_grid` reads them. Strict: raise
        GridParseError where arc24 fails. Lenient: never raise; a part arc24 cannot read (no code
        block, a line without a row number) holds no cells, a slot that is no colour 0-9 is None."""

    def locate_cells(self, text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The cells written in any text, as this encoder reads it, even ragged or cut short:
        (int64 [m, 2] character spans, int16 [m] row, int16 [m] col, int8 [m] colour).

        A cell is a slot of a grid line (as `to_grid` splits lines into slots) that reads as a
        colour 0-9. Its column is the slot's index in its line, so a slot that is no colour keeps
        its place; its row counts the grid lines that hold at least one cell, so a line without
        any (a blank line, prose) is not a row. Rows may have different lengths. On any text that
        `to_grid` reads, these are exactly its cells, and on `to_text(g)` exactly `render(g)`'s
        spans in row-major order (the tests check both)."""
        spans, rows, cols, colours = [], [], [], []
        row = 0
        for line in self._read(_Chars.of(text), False):
            found = False
            for col, (chars, value) in enumerate(line):
                if value is not None:
                    spans.append(chars.span())
                    rows.append(row)
                    cols.append(col)
                    colours.append(value)
                    found = True
            row += found
        return (
            np.asarray(spans, np.int64).reshape(-1, 2),
            np.asarray(rows, np.int16),
            np.asarray(cols, np.int16),
            np.asarray(colours, np.int8),
        )

    @abstractmethod
    def render(self, grid: Grid) -> tuple[str, np.ndarray]:
        """(to_text(grid), int64 [h*w, 2] character spans of the cells, row-major)."""

    @property
    @abstractmethod
    def expression(self) -> str: ...

    @property
    def chars_per_cell(self) -> int:
        """How many characters print one cell (token roles are exact when this is 1)."""
        return 1

    def cell_spans(self, height: int, width: int) -> np.ndarray:
        """The spans `render` reports for any grid of this shape. Every arc24 encoder prints one
        fixed-width token per colour, so where a cell lands depends on the shape alone; caching
        by shape saves most of the work of prompt rendering (the tests check it on random grids)."""
        cache = self.__dict__.setdefault("_spans_by_shape", {})
        spans = cache.get((height, width))
        if spans is None:
            spans = self.render(((0,) * width,) * height)[1]
            spans.setflags(write=False)
            cache[(height, width)] = spans
        return spans

    def __repr__(self) -> str:
        return self.expression

    def __eq__(self, other) -> bool:
        return isinstance(other, GridEncoder) and self.expression == other.expression

    def __hash__(self) -> int:
        return hash(self.expression)


def _row_major_spans(h: int, w: int, row_stride: int, col_stride: int, width: int) -> np.ndarray:
    rows, cols = np.divmod(np.arange(h * w, dtype=np.int64), w)
    start = rows * row_stride + cols * col_stride
    return np.stack([start, start + width], axis=1)


class MinimalGridEncoder(GridEncoder):
    """One digit per cell, rows on their own lines."""

    def to_text(self, grid):
        return "\n".join("".join(map(str, row)) for row in grid)

    def render(self, grid):
        h, w = len(grid), len(grid[0])
        return self.to_text(grid), _row_major_spans(h, w, w + 1, 1, 1)

    def _read(self, text, strict):
        return [
            [(line[i : i + 1], _colour(c, strict)) for i, c in enumerate(line.s)]
            for line in text.strip().splitlines()
        ]

    @property
    def expression(self):
        return "MinimalGridEncoder()"


class GridWithSeparationEncoder(GridEncoder):
    """Digits joined by `split_symbol`, e.g. '|' gives "1|2|3"."""

    def __init__(self, split_symbol: str):
        if not isinstance(split_symbol, str) or not split_symbol:
            raise ValueError("GridWithSeparationEncoder needs a non-empty string separator")
        # Digits or line breaks would make the text ambiguous (no round trip), '<' could forge a
        # chat-template marker and \ue000/\ue001 are our own placeholders (chat.py).
        if (
            any(c.isdigit() or c in "<\ue000\ue001" for c in split_symbol)
            or len(f"a{split_symbol}a".splitlines()) > 1
        ):
            raise ValueError(f"GridWithSeparationEncoder: unusable separator {split_symbol!r}")
        self.split_symbol = split_symbol

    def to_text(self, grid):
        return "\n".join(self.split_symbol.join(map(str, row)) for row in grid)

    def render(self, grid):
        h, w = len(grid), len(grid[0])
        s = len(self.split_symbol)
        return self.to_text(grid), _row_major_spans(h, w, w + (w - 1) * s + 1, 1 + s, 1)

    def _read(self, text, strict):
        # int() reads " 3" as 3: the cell is the slot without the spaces around it
        return [
            [(x.strip(), _colour(x.s, strict)) for x in line.split(self.split_symbol)]
            for line in text.strip().splitlines()
        ]

    @property
    def expression(self):
        return f"GridWithSeparationEncoder({self.split_symbol!r})"


class RepeatNumberEncoder(GridEncoder):
    """Each digit printed n times ("111222"); arc24's default n is 3."""

    def __init__(self, n: int = 3):
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError("RepeatNumberEncoder needs a positive integer n")
        self.n = n

    def to_text(self, grid):
        return "\n".join("".join(str(x) * self.n for x in row) for row in grid)

    def render(self, grid):
        h, w = len(grid), len(grid[0])
        return self.to_text(grid), _row_major_spans(h, w, w * self.n + 1, self.n, self.n)

    def _read(self, text, strict):
        # As arc24: every n-th character, without checking the repeats agree. The cell is its
        # n characters (the last one of a line may be cut short), as `render` reports it.
        n = self.n
        return [
            [(line[i : i + n], _colour(c, strict)) for i, c in zip(range(0, len(line), n), line.s[::n])]
            for line in text.strip().splitlines()
        ]

    @property
    def chars_per_cell(self):
        return self.n

    @property
    def expression(self):
        return f"RepeatNumberEncoder({self.n})"


class _Wrapper(GridEncoder):
    def __init__(self, base_encoder: GridEncoder):
        if not isinstance(base_encoder, GridEncoder):
            raise TypeError(f"{type(self).__name__} wraps another encoder, got {base_encoder!r}")
        self.encoder = base_encoder

    @property
    def chars_per_cell(self):
        return self.encoder.chars_per_cell

    @property
    def expression(self):
        return f"{type(self).__name__}({self.encoder.expression})"


class GridCodeBlockEncoder(_Wrapper):
    """The base text inside a ```grid code block."""

    def to_text(self, grid):
        return f"```grid\n{self.encoder.to_text(grid)}\n```"

    def render(self, grid):
        text, spans = self.encoder.render(grid)
        return f"```grid\n{text}\n```", spans + len("```grid\n")

    def _read(self, text, strict):
        parts = text.split("```grid\n", 2)  # as arc24's split: the text up to a second block
        if len(parts) < 2:
            if strict:
                raise GridParseError("no ```grid code block")
            return []
        return self.encoder._read(parts[1].split("\n```", 1)[0], strict)


class GridShapeEncoder(_Wrapper):
    """A ```grid shape: HxW code block (arc24's default, around RowNumberEncoder)."""

    def _header(self, grid):
        return f"```grid shape: {len(grid)}x{len(grid[0])}\n"

    def to_text(self, grid):
        return f"{self._header(grid)}{self.encoder.to_text(grid)}\n```"

    def render(self, grid):
        text, spans = self.encoder.render(grid)
        header = self._header(grid)
        return f"{header}{text}\n```", spans + len(header)

    def _read(self, text, strict):
        # arc24 reads the lines after the header up to the closing fence; the shape is not checked.
        grid_lines, inside = [], False
        for line in text.splitlines():
            if line.s.startswith("```grid shape:"):
                inside = True
            elif inside:
                if line.s.startswith("```"):
                    break
                if grid_lines:
                    grid_lines.append(_Chars.new("\n"))
                grid_lines.append(line)
        return self.encoder._read(_Chars.concat(grid_lines), strict)


class RowNumberEncoder(_Wrapper):
    """Each line of the base text prefixed with its 1-based number and a space."""

    def to_text(self, grid):
        text = self.encoder.to_text(grid)
        return "".join(f"{i + 1} {line}\n" for i, line in enumerate(text.splitlines())).strip()

    def render(self, grid):
        base, spans = self.encoder.render(grid)
        lines = base.splitlines(keepends=True)
        contents = [line.splitlines()[0] for line in lines]  # each line without its line break
        prefixes = [f"{i + 1} " for i in range(len(lines))]
        joined = "".join(f"{p}{c}\n" for p, c in zip(prefixes, contents))
        text = joined.strip()  # as arc24; the text starts with "1 ", so only its end can move
        # Shift every span by the growth of the text before its line: the prefixes so far, less
        # any line break that was longer than the "\n" it became.
        base_starts = np.cumsum([0] + [len(line) for line in lines[:-1]])
        new_starts = np.cumsum([0] + [len(p) + len(c) + 1 for p, c in zip(prefixes, contents)][:-1])
        line_of = np.searchsorted(base_starts, spans[:, 0], side="right") - 1
        shift = (new_starts + np.array([len(p) for p in prefixes]) - base_starts)[line_of]
        new_spans = spans + shift[:, None]
        if (new_spans[:, 1] > len(text)).any():
            raise AssertionError("a cell fell outside RowNumberEncoder's stripped text")
        return text, new_spans

    def _read(self, text, strict):
        stripped = []
        for line in text.splitlines():
            parts = line.split(" ", 1)
            if len(parts) < 2:
                if strict:
                    raise GridParseError(f"line without a row number: {line.s!r}")
                continue  # nothing of this line is read as cells
            stripped += [parts[1], _Chars.new("\n")]
        return self.encoder._read(_Chars.concat(stripped), strict)


class ReplaceNumberEncoder(_Wrapper):
    """Every digit of the base text (row numbers included) replaced by one of arc24's symbols."""

    symbols = ("ñ", "ò", "÷", "û", "ą", "ć", "ď", "ę", "Ě", "Ğ")
    # One character for one digit, so cell spans do not move. Symbols contain no digits, so
    # arc24's ten successive str.replace calls are one translation table.
    _encode = str.maketrans({str(i): s for i, s in enumerate(symbols)})
    _decode = str.maketrans({s: str(i) for i, s in enumerate(symbols)})

    def to_text(self, grid):
        return self.encoder.to_text(grid).translate(self._encode)

    def render(self, grid):
        text, spans = self.encoder.render(grid)
        return text.translate(self._encode), spans

    def _read(self, text, strict):
        return self.encoder._read(text.translate(self._decode), strict)


ENCODER_CLASSES: dict[str, type[GridEncoder]] = {
    cls.__name__: cls
    for cls in (
        MinimalGridEncoder,
        GridWithSeparationEncoder,
        GridCodeBlockEncoder,
        GridShapeEncoder,
        RowNumberEncoder,
        RepeatNumberEncoder,
        ReplaceNumberEncoder,
    )
}
