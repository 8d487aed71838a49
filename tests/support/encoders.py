"""Encoder expressions and hypothesis texts shared by the encoder and output-role tests."""

from __future__ import annotations

from hypothesis import strategies as st

# arc24's encoders, alone and nested, as `--encoder` takes them.
EXPRESSIONS = [
    "MinimalGridEncoder()",
    "GridWithSeparationEncoder('|')",
    "GridWithSeparationEncoder(' ')",
    "RepeatNumberEncoder(3)",
    "RepeatNumberEncoder(n=2)",
    "GridCodeBlockEncoder(MinimalGridEncoder())",
    "GridCodeBlockEncoder(GridWithSeparationEncoder(', '))",
    "GridShapeEncoder(RowNumberEncoder(MinimalGridEncoder()))",
    "RowNumberEncoder(GridWithSeparationEncoder('|'))",
    "ReplaceNumberEncoder(MinimalGridEncoder())",
    "GridShapeEncoder(RowNumberEncoder(ReplaceNumberEncoder(MinimalGridEncoder())))",
    "ReplaceNumberEncoder(RowNumberEncoder(GridCodeBlockEncoder(RepeatNumberEncoder(2))))",
]

# Model output as parsers meet it: grid-like characters, fences, separators, odd line breaks and
# non-ASCII digits, or anything at all.
ENCODER_TEXTS = st.text(
    alphabet=st.sampled_from(list("0123456789 |,\n\r`gridshapex:ñò÷ûą<>|-\u2028\x0b٣")), max_size=60
) | st.text(max_size=40)
