"""The output side: model text -> grid, validation, and arc24's voting.

arc24 (scripts/inference.py, scripts/voting.py) parses each response with
`grid_encoder.to_grid('```grid' + response)`, reverts the augmentation, validates the grid, and
then votes per test input: identical grids are grouped, ranked by (number of votes, mean over the
group of each prediction's mean token log-probability), and the top two become attempt_1 and
attempt_2.

`output_token_roles` gives the generated tokens the grid roles prompt tokens have (roles.py), for
`arclens infer --hooks`: the answer is read as `parse_grid` reads it, leniently.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from arclens.data.tasks import Grid
from arclens.prompts.chat import INFERENCE_ANSWER
from arclens.prompts.encoders import GridEncoder, GridParseError
from arclens.prompts.expression import create_grid_encoder
from arclens.prompts.roles import text_cells, token_roles

MAX_GRID_SIDE = 30  # ARC's limit (SPEC.md section 1)


def validate_grid(grid) -> Grid:
    """arc24's validate_grid (non-empty, rectangular, colours 0-9) plus ARC's 30x30 limit."""
    if not isinstance(grid, (list, tuple)) or not grid:
        raise GridParseError("not a non-empty grid")
    rows = []
    for row in grid:
        if not isinstance(row, (list, tuple)) or not row:
            raise GridParseError("empty row")
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 9 for v in row):
            raise GridParseError("colours must be integers 0-9")
        rows.append(tuple(row))
    if len({len(r) for r in rows}) != 1:
        raise GridParseError("ragged grid")
    if len(rows) > MAX_GRID_SIDE or len(rows[0]) > MAX_GRID_SIDE:
        raise GridParseError(f"larger than {MAX_GRID_SIDE}x{MAX_GRID_SIDE}")
    return tuple(rows)


def parse_grid(text: str, encoder: GridEncoder | str) -> Grid | None:
    """The grid in a model's response to an inference prompt (which ends in "```grid"), or None.

    Never raises on any string: malformed, ragged or out-of-range output is "no grid".
    """
    if isinstance(encoder, str):
        encoder = create_grid_encoder(encoder)  # a bad expression is the user's error, not the model's
    if not isinstance(text, str):
        return None
    try:
        return validate_grid(encoder.to_grid(INFERENCE_ANSWER + text))
    except (GridParseError, ValueError, IndexError):
        return None


def decode_with_offsets(tokenizer, token_ids) -> tuple[str, np.ndarray]:
    """(text, int64 [n, 2] character span of each token in it) for generated ids.

    The text is `tokenizer.decode(ids, skip_special_tokens=True)`, what infer records; special
    tokens are empty spans. A token that holds only part of a character's bytes (byte-level BPE
    splits rare characters) has that character's span, as the tokenizer's offsets give it for the
    same text in a prompt; the tests check the spans against those offsets."""
    ids = [int(i) for i in token_ids]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    pieces = tokenizer.backend_tokenizer.decode_batch([[i] for i in ids], skip_special_tokens=True)
    if "".join(pieces) == text:  # every token decodes to whole characters on its own
        ends = np.cumsum([len(p) for p in pieces], dtype=np.int64).reshape(len(ids))
    else:  # token k ends where the text decoded through it stops agreeing with the whole text
        ends, end = np.zeros(len(ids), np.int64), 0
        for k in range(len(ids)):
            end = max(end, _agreement(tokenizer.decode(ids[: k + 1], skip_special_tokens=True), text, end))
            ends[k] = end
    starts = np.zeros_like(ends)
    starts[1:] = ends[:-1]
    # a piece of a character adds no whole character: give it the one it is part of, the next
    partial = (starts == ends) & np.array([p != "" for p in pieces], bool) & (ends < len(text))
    ends = np.where(partial, ends + 1, ends)
    return text, np.stack([starts, ends], axis=1).reshape(len(ids), 2)


def _agreement(a: str, b: str, known: int) -> int:
    """The length of the common prefix of a and b (at least `known` when they agree that far)."""
    i = known if a[:known] == b[:known] else 0
    m = min(len(a), len(b))
    while i < m and a[i] == b[i]:
        i += 1
    return i


def output_token_roles(
    tokenizer, token_ids, encoder: GridEncoder | str, grid_number: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(grid, row, col) int16 [n] for the tokens a model generated after an inference prompt.

    The answer is read as `parse_grid` reads it ("```grid" + the decoded text) with the encoder's
    lenient reading (encoders.py `locate_cells`: its cells, ragged or cut short included), and
    each token gets its role by the rule of prompt tokens (roles.py `token_roles`): a token inside
    one cell's span is that cell of grid `grid_number`, anything else is -1."""
    if isinstance(encoder, str):
        encoder = create_grid_encoder(encoder)
    text, offsets = decode_with_offsets(tokenizer, token_ids)
    cells = text_cells(encoder, INFERENCE_ANSWER + text, grid_number, offset=-len(INFERENCE_ANSWER))
    return token_roles(offsets, cells)


@dataclass(frozen=True)
class Prediction:
    """One parsed, reverted prediction for one test input. Give `mean_logprob` (the mean
    log-probability of the generated tokens) or `logprobs` (one per generated token)."""

    grid: Grid | None
    mean_logprob: float | None = None
    logprobs: Sequence[float] | None = None

    def score(self) -> float:
        """The tie-break value; -inf when unknown (arc24 would divide by zero there)."""
        if self.mean_logprob is not None:
            value = float(self.mean_logprob)
        elif self.logprobs:
            value = math.fsum(self.logprobs) / len(self.logprobs)
        else:
            return -math.inf
        return -math.inf if math.isnan(value) else value


def vote(predictions: Iterable[Prediction], n_attempts: int = 2) -> list[Grid]:
    """Up to `n_attempts` grids, most voted first; ties broken by the higher mean of the
    predictions' mean log-probabilities, then by first appearance (arc24's stable sort)."""
    groups: dict[Grid, list[float]] = {}
    for p in predictions:
        if p.grid is None:
            continue
        groups.setdefault(p.grid, []).append(p.score())

    def ranking(item):
        scores = item[1]
        mean = float(np.mean(scores))  # as arc24 (np.mean), so near-ties break the same way
        return (len(scores), -math.inf if math.isnan(mean) else mean)

    ranked = sorted(groups.items(), key=ranking, reverse=True)
    return [grid for grid, _ in ranked[:n_attempts]]
