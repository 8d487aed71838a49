"""Encoders: arc24's texts, round trips, cell spans, the expression parser, parse_grid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.encoders import ENCODER_TEXTS, EXPRESSIONS

from arclens.data.tasks import as_grid
from arclens.errors import UserError
from arclens.prompts import create_grid_encoder, parse_grid

GOLDENS = json.loads((Path(__file__).parent / "goldens" / "encoders.json").read_text(encoding="utf-8"))

# The seven encoders, alone where they stand alone, and composed as arc24 composes them.

grids = st.integers(1, 30).flatmap(
    lambda h: st.integers(1, 30).flatmap(
        lambda w: st.lists(st.lists(st.integers(0, 9), min_size=w, max_size=w), min_size=h, max_size=h)
    )
)


@pytest.mark.parametrize("expression", sorted(GOLDENS["to_text"]))
def test_to_text_matches_arc24(expression):
    encoder = create_grid_encoder(expression)
    for case in GOLDENS["to_text"][expression]:
        assert encoder.to_text(as_grid(case["grid"])) == case["text"]
        assert encoder.render(as_grid(case["grid"]))[0] == case["text"]
        assert encoder.to_grid(case["text"]) == as_grid(case["grid"])


@pytest.mark.parametrize("expression", sorted(GOLDENS["parse"]))
def test_parse_grid_matches_arc24(expression):
    for case in GOLDENS["parse"][expression]:
        expected = None if case["grid"] is None else as_grid(case["grid"])
        assert parse_grid(case["response"], expression) == expected, repr(case["response"])


@pytest.mark.parametrize("expression", EXPRESSIONS)
@settings(max_examples=20, deadline=None)
@given(grid=grids)
def test_round_trip_and_cell_spans(expression, grid):
    encoder = create_grid_encoder(expression)
    grid = as_grid(grid)
    text, spans = encoder.render(grid)
    assert text == encoder.to_text(grid)
    assert (
        encoder.cell_spans(len(grid), len(grid[0])) == spans
    ).all()  # the layout depends on the shape only
    assert encoder.to_grid(text) == grid
    # Every span holds that cell's colour as printed (a symbol for ReplaceNumberEncoder).
    flat = [v for row in grid for v in row]
    assert spans.shape == (len(flat), 2)
    assert (spans[1:, 0] >= spans[:-1, 1]).all(), "spans overlap or are out of order"
    symbols = "ñò÷ûąćďęĚĞ"
    for (start, end), v in zip(spans.tolist(), flat):
        assert text[start:end] in (str(v) * encoder.chars_per_cell, symbols[v] * encoder.chars_per_cell)


def test_expression_is_canonical_and_parsed_not_evaluated():
    enc = create_grid_encoder(" GridShapeEncoder( RowNumberEncoder(base_encoder=MinimalGridEncoder()), ) ")
    assert enc.expression == "GridShapeEncoder(RowNumberEncoder(MinimalGridEncoder()))"
    assert create_grid_encoder(enc.expression) == enc
    assert create_grid_encoder('GridWithSeparationEncoder("\\t")').split_symbol == "\t"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "Foo()",
        "__import__('os').system('true')",
        "MinimalGridEncoder",
        "MinimalGridEncoder(",
        "MinimalGridEncoder() MinimalGridEncoder()",
        "MinimalGridEncoder(1)",
        "GridCodeBlockEncoder()",
        "GridCodeBlockEncoder(3)",
        "RepeatNumberEncoder(0)",
        "RepeatNumberEncoder('3')",
        "GridWithSeparationEncoder('1')",
        "GridWithSeparationEncoder('\\n')",
        "GridWithSeparationEncoder('')",
        "RowNumberEncoder(base=MinimalGridEncoder())",
        "RowNumberEncoder(base_encoder=MinimalGridEncoder(), MinimalGridEncoder())",
        "MinimalGridEncoder();",
        "GridWithSeparationEncoder('|)",
    ],
)
def test_bad_expressions_are_user_errors(bad):
    with pytest.raises(UserError, match="--encoder"):
        create_grid_encoder(bad)


@pytest.mark.parametrize("expression", EXPRESSIONS)
@settings(max_examples=60, deadline=None)
@given(text=ENCODER_TEXTS)
def test_parse_grid_never_raises(expression, text):
    result = parse_grid(text, expression)
    if result is not None:
        assert 1 <= len(result) <= 30 and len({len(r) for r in result}) == 1
        assert all(0 <= v <= 9 for r in result for v in r)


@pytest.mark.parametrize("expression", EXPRESSIONS)
@settings(max_examples=10, deadline=None)
@given(grid=grids)
def test_parse_grid_reads_a_well_formed_response(expression, grid):
    encoder = create_grid_encoder(expression)
    grid = as_grid(grid)
    text = encoder.to_text(grid)
    if not text.startswith("```grid"):
        return  # only the code-block encoders make sense after the prompt's "```grid"
    assert parse_grid(text[len("```grid") :] + "<|im_end|>", encoder) == grid


def test_parse_grid_rejects_bad_grids():
    enc = "GridShapeEncoder(RowNumberEncoder(MinimalGridEncoder()))"
    assert parse_grid(" shape: 2x2\n1 12\n2 3\n```", enc) is None  # ragged
    assert parse_grid(" shape: 1x31\n1 " + "1" * 31 + "\n```", enc) is None  # wider than ARC allows
    assert parse_grid(" shape: 1x2\n1 12\n```", enc) == ((1, 2),)
    assert parse_grid(" shape: 1x2\n1 1|\n```", enc) is None
    assert parse_grid(None, enc) is None
