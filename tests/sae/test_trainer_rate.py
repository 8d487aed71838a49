"""The tokens/s a finished run reports: its tokens over its seconds after the first metrics
interval (the compile). On the fly the forward passes come in bursts, one shuffle window every few
steps, so most metric intervals are fast and a few are slow; a median of the interval rates
would report the fast ones alone."""

from __future__ import annotations

import pytest

from arclens.sae.trainer import steady_tokens_per_s


def test_the_slow_intervals_count_by_their_time():
    bs = 512
    # steps 1..4: compile, a fast step, a step that waited for a window's forward passes, a fast step
    lines = [{"step": s, "tokens_per_s": r} for s, r in ((1, 150.0), (2, 2e5), (3, 100.0), (4, 2e5))]
    seconds = bs / 2e5 + bs / 100.0 + bs / 2e5
    assert steady_tokens_per_s(lines, bs) == pytest.approx(3 * bs / seconds)
    assert steady_tokens_per_s(lines, bs) < 310  # a median of the last three would say 200,000


def test_intervals_of_several_steps_and_too_few_lines():
    lines = [{"step": 10, "tokens_per_s": 1.0}, {"step": 30, "tokens_per_s": 400.0}, {"step": 40, "tokens_per_s": 100.0}]
    # 20 steps at 400 tokens/s, 10 steps at 100: 30 steps x 4 tokens in 0.2 + 0.4 s
    assert steady_tokens_per_s(lines, 4) == pytest.approx(120 / 0.6)
    assert steady_tokens_per_s(lines[:1], 4) is None and steady_tokens_per_s([], 4) is None
