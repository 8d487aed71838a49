"""Token roles of generated answers: the encoder's lenient reading (`locate_cells`), the decoded
tokens' spans, and `output_token_roles`, against the conventions of prompt tokens."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.encoders import ENCODER_TEXTS, EXPRESSIONS

from arclens.data.tasks import as_grid
from arclens.prompts import create_grid_encoder, output_token_roles, parse_grid
from arclens.prompts.encoders import GridParseError
from arclens.prompts.output import decode_with_offsets
from arclens.prompts.roles import Cells, token_roles

DEFAULT = "GridShapeEncoder(RowNumberEncoder(MinimalGridEncoder()))"
SYMBOLS = "ñò÷ûąćďęĚĞ"
# The seven encoders alone and composed (as tests/prompts/test_prompt_encoders.py lists them).


def grids(max_side):
    return st.integers(1, max_side).flatmap(
        lambda h: st.integers(1, max_side).flatmap(
            lambda w: st.lists(st.lists(st.integers(0, 9), min_size=w, max_size=w), min_size=h, max_size=h)
        )
    )


def as_written(encoder, grid) -> str:
    """The answer a model writes after an inference prompt (which ends in "```grid")."""
    text = encoder.to_text(grid)
    return text.removeprefix("```grid") if text.startswith("```grid") else "\n" + text


def generated_ids(tokenizer, text, stop=True) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids + [tokenizer.convert_tokens_to_ids("<|im_end|>")] if stop else ids


def roles_by_token(tokenizer, text, encoder=DEFAULT, number=7, stop=True):
    """[(token text, (grid, row, col) or None)] for `text` generated token by token."""
    ids = generated_ids(tokenizer, text, stop)
    grid, row, col = output_token_roles(tokenizer, ids, encoder, number)
    assert grid.dtype == row.dtype == col.dtype == np.int16 and len(grid) == len(ids)
    assert ((grid < 0) == (row < 0)).all() and ((grid < 0) == (col < 0)).all()
    pieces = tokenizer.backend_tokenizer.decode_batch([[i] for i in ids], skip_special_tokens=False)
    return [(p, None if g < 0 else (int(g), int(r), int(c))) for p, g, r, c in zip(pieces, grid, row, col)]


def cells_of(roles):
    return [(p, cell) for p, cell in roles if cell is not None]


# --- hand-made answers through the tiny tokenizer (every digit is its own token) --------------


def test_well_formed_answer(tokenizer):
    roles = roles_by_token(tokenizer, " shape: 2x3\n1 012\n2 345\n```")
    assert cells_of(roles) == [
        ("0", (7, 0, 0)), ("1", (7, 0, 1)), ("2", (7, 0, 2)),
        ("3", (7, 1, 0)), ("4", (7, 1, 1)), ("5", (7, 1, 2)),
    ]  # fmt: skip
    # the header's digits, the row numbers, spaces, line breaks, the fence and the stop: -1
    assert [p for p, cell in roles if cell is None] == [
        " shape",
        ":",
        " ",
        "2",
        "x",
        "3",
        "\n",
        "1",
        " ",
        "\n",
        "2",
        " ",
        "\n",
        "```",
        "<|im_end|>",
    ]


def test_ragged_answer_keeps_each_row_as_written(tokenizer):
    text = " shape: 3x3\n1 012\n2 34\n3 5678\n```"
    assert parse_grid(text, DEFAULT) is None
    assert cells_of(roles_by_token(tokenizer, text)) == [
        ("0", (7, 0, 0)), ("1", (7, 0, 1)), ("2", (7, 0, 2)),
        ("3", (7, 1, 0)), ("4", (7, 1, 1)),
        ("5", (7, 2, 0)), ("6", (7, 2, 1)), ("7", (7, 2, 2)), ("8", (7, 2, 3)),
    ]  # fmt: skip


def test_truncated_answer(tokenizer):
    # cut by --max-new-tokens: no closing fence, no stop token, the last row half written
    roles = roles_by_token(tokenizer, " shape: 3x3\n1 012\n2 3", stop=False)
    assert cells_of(roles) == [("0", (7, 0, 0)), ("1", (7, 0, 1)), ("2", (7, 0, 2)), ("3", (7, 1, 0))]
    # cut inside the header: nothing is a cell yet
    assert cells_of(roles_by_token(tokenizer, " shape: 3x", stop=False)) == []
    # row numbers of two digits are never cells
    roles = roles_by_token(
        tokenizer, " shape: 12x1\n" + "".join(f"{i + 1} {i % 10}\n" for i in range(12)), stop=False
    )
    assert [cell for _, cell in cells_of(roles)] == [(7, r, 0) for r in range(12)]
    assert [p for p, _ in cells_of(roles)] == [str(i % 10) for i in range(12)]


def test_garbage_has_no_cells(tokenizer):
    for text in ("Sorry, I can't 123 do that.\n", "```\n1 2\n", "", "<|endoftext|>"):
        assert cells_of(roles_by_token(tokenizer, text)) == []


def test_bad_slots_keep_their_column_and_lines_without_cells_are_no_rows(tokenizer):
    # MinimalGridEncoder's answer is read as "```grid" + text: the fence line and the blank line
    # hold no cell, so they are no rows; 'a', 'b', 'c', 'x' are not colours but keep their place.
    roles = roles_by_token(tokenizer, "\nab1c\n\n22x\n", "MinimalGridEncoder()", number=3)
    assert cells_of(roles) == [("1", (3, 0, 2)), ("2", (3, 1, 0)), ("2", (3, 1, 1))]
    # a separated grid: an empty slot and a two-digit slot ("45": no colour) are no cells; " 2"
    # reads as 2 (arc24's int()), and the cell is its digit, not the space
    enc = "GridCodeBlockEncoder(GridWithSeparationEncoder('|'))"
    roles = roles_by_token(tokenizer, "\n1| 2|x\n3||45\n```", enc)
    assert cells_of(roles) == [("1", (7, 0, 0)), ("2", (7, 0, 1)), ("3", (7, 1, 0))]
    assert [p for p, _ in roles[:5]] == ["\n", "1", "|", " ", "2"]


def test_repeat_encoder_cells_are_their_n_tokens(tokenizer):
    roles = roles_by_token(tokenizer, "\n111222\n33\n```", "GridCodeBlockEncoder(RepeatNumberEncoder(3))")
    assert cells_of(roles) == [("1", (7, 0, 0))] * 3 + [("2", (7, 0, 1))] * 3 + [("3", (7, 1, 0))] * 2


def test_split_characters_are_described_as_in_a_prompt(tokenizer):
    # The tiny tokenizer splits arc24's symbols into two byte tokens; both carry the cell, as the
    # tokenizer's offsets make them do in a prompt.
    enc = "GridCodeBlockEncoder(ReplaceNumberEncoder(MinimalGridEncoder()))"
    text = "\nñò\n÷\n```"
    ids = generated_ids(tokenizer, text)
    assert len(ids) > len(text) + 1, "the symbols are expected to be split into bytes"
    roles = roles_by_token(tokenizer, text, enc)
    assert [cell for _, cell in cells_of(roles)] == [(7, 0, 0)] * 2 + [(7, 0, 1)] * 2 + [(7, 1, 0)] * 2


# --- properties ------------------------------------------------------------------------------


@pytest.mark.parametrize("expression", EXPRESSIONS)
@settings(max_examples=15, deadline=None)
@given(grid=grids(30))
def test_located_cells_are_the_rendered_cells(expression, grid):
    """On an encoder's own text the lenient reading finds exactly `render`'s cells: the spans,
    in row-major order, with their colours (the convention of prompt roles)."""
    encoder = create_grid_encoder(expression)
    grid = as_grid(grid)
    text, spans = encoder.render(grid)
    found, rows, cols, colours = encoder.locate_cells(text)
    h, w = len(grid), len(grid[0])
    np.testing.assert_array_equal(found, spans)
    np.testing.assert_array_equal(rows, np.repeat(np.arange(h), w))
    np.testing.assert_array_equal(cols, np.tile(np.arange(w), h))
    np.testing.assert_array_equal(colours, np.asarray(grid).ravel())


@pytest.mark.parametrize("expression", EXPRESSIONS)
@settings(max_examples=60, deadline=None)
@given(text=ENCODER_TEXTS)
def test_lenient_reading_agrees_with_to_grid(expression, text):
    """On any text: never raises, cells in text order inside the text, and wherever `to_grid`
    reads a grid, exactly its cells."""
    encoder = create_grid_encoder(expression)
    spans, rows, cols, colours = encoder.locate_cells(text)
    assert (spans[:, 0] < spans[:, 1]).all() and (spans[:, 0] >= 0).all() and (spans[:, 1] <= len(text)).all()
    assert (spans[1:, 0] >= spans[:-1, 1]).all()
    assert ((colours >= 0) & (colours <= 9)).all()
    try:
        grid = encoder.to_grid(text)
    except GridParseError:
        return
    h, w = len(grid), len(grid[0])
    np.testing.assert_array_equal(rows, np.repeat(np.arange(h), w))
    np.testing.assert_array_equal(cols, np.tile(np.arange(w), h))
    np.testing.assert_array_equal(colours, np.asarray(grid).ravel())


@settings(max_examples=100, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from(list("0123456789 \n|`xñ÷漢é")), max_size=40) | st.text(max_size=20)
)
def test_decoded_spans_equal_the_tokenizers_offsets(tokenizer, text):
    """A generated token's span is the one the tokenizer's offsets give it in a prompt (for ids
    that are the tokenization of their text), so output roles follow the prompt's rule. Texts the
    tokenizer's NFC normaliser would change (e.g. U+2F800, a compatibility ideograph) are not the
    decoding of any ids, so they are left out."""
    import unicodedata

    from hypothesis import assume

    assume(unicodedata.normalize("NFC", text) == text)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    decoded, spans = decode_with_offsets(tokenizer, enc["input_ids"])
    assert decoded == text
    assert spans.tolist() == [list(o) for o in enc["offset_mapping"]]


@pytest.mark.parametrize("expression", EXPRESSIONS)
@settings(max_examples=8, deadline=None)
@given(grid=grids(12), cut=st.floats(0, 1))
def test_answers_as_the_model_writes_them(tokenizer, expression, grid, cut):
    """An answer generated token by token, then the stop token, gets the roles that the prompt's
    rule (`render`'s cell spans, the tokenizer's offsets, `token_roles`) gives the same text: its
    cells in row-major order, each on tokens of its colour. Cut short anywhere, it keeps the
    roles it had, less at most its last, partial cell."""
    encoder = create_grid_encoder(expression)
    grid = as_grid(grid)
    h, w = len(grid), len(grid[0])
    text = as_written(encoder, grid)
    ids = generated_ids(tokenizer, text)
    g, r, c = output_token_roles(tokenizer, ids, encoder, 5)

    rendered, spans = encoder.render(grid)
    shift = len(text) - len(rendered)  # -7 after "```grid", +1 after the line break
    cells = Cells(
        spans[:, 0] + shift, spans[:, 1] + shift, np.full(h * w, 5, np.int16), *np.divmod(np.arange(h * w), w)
    )
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    for want, got in zip(token_roles(np.asarray(offsets), cells), (g, r, c)):
        np.testing.assert_array_equal(got, [*want, -1])  # the stop token is no cell
    found = [(int(r[k]), int(c[k])) for k in np.flatnonzero(g >= 0)]
    assert list(dict.fromkeys(found)) == [divmod(i, w) for i in range(h * w)] and found == sorted(found)
    pieces = tokenizer.backend_tokenizer.decode_batch([[i] for i in ids])
    for k in np.flatnonzero(g >= 0):
        v = grid[r[k]][c[k]]
        assert pieces[k] in (str(v) * len(pieces[k]), SYMBOLS[v] * len(pieces[k])) or "\ufffd" in pieces[k]

    n = int(cut * (len(ids) - 1))  # cut by --max-new-tokens before the stop token
    gc, rc, cc = output_token_roles(tokenizer, ids[:n], encoder, 5)
    kept = np.flatnonzero(gc >= 0)
    assert (gc[kept] == 5).all() and (rc[kept] == r[kept]).all() and (cc[kept] == c[kept]).all()
    lost = np.flatnonzero((gc < 0) & (g[:n] >= 0))
    assert len({(int(r[k]), int(c[k])) for k in lost}) <= 1, "a cut loses at most its last cell"
