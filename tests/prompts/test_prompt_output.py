"""Voting against arc24's own choices, and the Prediction tie-break value."""

from __future__ import annotations

import json
import math
from pathlib import Path

from arclens.data.tasks import as_grid
from arclens.prompts import Prediction, vote

CASES = json.loads((Path(__file__).parent / "goldens" / "voting.json").read_text())["cases"]


def test_vote_matches_arc24():
    assert len(CASES) == 40
    for case in CASES:
        predictions = [
            Prediction(
                None if p["grid"] is None else as_grid(p["grid"]),
                mean_logprob=p["cumulative_logprob"] / p["n_tokens"],
            )
            for p in case["predictions"]
        ]
        expected = [as_grid(g) for g in case["attempts"] if g]
        assert vote(predictions) == expected


def test_vote_counts_first_then_mean_logprob():
    a, b, c = as_grid([[1]]), as_grid([[2]]), as_grid([[3]])
    preds = [
        Prediction(a, mean_logprob=-0.1),
        Prediction(b, logprobs=[-0.5, -1.5]),  # mean -1.0
        Prediction(b, mean_logprob=-0.2),  # b: 2 votes, mean -0.6
        Prediction(c, mean_logprob=-0.01),
        Prediction(None, mean_logprob=0.0),  # unparsable: never a vote
    ]
    assert vote(preds) == [b, c]
    assert vote(preds, n_attempts=3) == [b, c, a]
    assert vote([]) == []
    assert vote([Prediction(a)]) == [a]


def test_prediction_score():
    assert Prediction(None, logprobs=[-1.0, -2.0]).score() == -1.5
    assert Prediction(None, mean_logprob=-0.3, logprobs=[-9.0]).score() == -0.3
    assert Prediction(None).score() == -math.inf
    assert Prediction(None, mean_logprob=float("nan")).score() == -math.inf
