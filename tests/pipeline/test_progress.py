"""Progress lines: rate and ETA follow recent progress, not the slow start."""

from __future__ import annotations

import io

from arclens.pipeline.progress import ProgressReporter


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_eta_ignores_the_slow_start_and_follows_the_recent_rate():
    clock, out = _Clock(), io.StringIO()
    rep = ProgressReporter(1000, log_every_s=1e9, stream=out, window_s=60, clock=clock)
    assert rep.line().endswith("tokens/s ?, ETA ?")
    clock.t = 120.0  # loading and the first compiles: nothing finished for two minutes
    rep.advance(10, 10_000)
    assert rep.rates() == (None, None) and rep.line().endswith("ETA ?")
    for _ in range(30):  # then 10 samples (10k tokens) every 2 s
        clock.t += 2.0
        rep.advance(10, 10_000)
    samples_per_s, tokens_per_s = rep.rates()
    assert samples_per_s == 5.0 and tokens_per_s == 5000.0
    # 690 samples left at 5/s: 138 s (an average since the start would say 340 s)
    assert "310/1000 samples, 310,000 tokens, 5.0k tokens/s, ETA 2:18" in rep.line()


def test_the_window_forgets_old_rates():
    clock = _Clock()
    rep = ProgressReporter(10_000, enabled=False, window_s=10, clock=clock)
    for _ in range(20):  # slow phase: 1 sample/s
        clock.t += 1.0
        rep.advance(1, 100)
    for _ in range(20):  # fast phase: 10 samples/s
        clock.t += 1.0
        rep.advance(10, 1000)
    samples_per_s, _ = rep.rates()
    assert samples_per_s == 10.0


def test_plain_lines_every_log_interval():
    clock, out = _Clock(), io.StringIO()
    rep = ProgressReporter(100, log_every_s=30, stream=out, clock=clock)
    for _ in range(10):
        clock.t += 10.0
        rep.advance(1, 50)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and all(ln.startswith("arclens extract: ") for ln in lines)


def test_while_shapes_compile_the_line_says_so_and_the_rate_starts_after():
    # The demo said "ETA 17:14" for an extract that took 2:30: batches that waited for compiles
    # were counted as throughput. While shapes compile there is no ETA, and the rate window
    # restarts at the last batch written while compiling.
    clock, pending = _Clock(), [3]
    rep = ProgressReporter(1000, enabled=False, window_s=600, clock=clock, compiling=lambda: pending[0])
    for _ in range(5):  # slow: every batch waits for a compile
        clock.t += 30.0
        rep.advance(10, 10_000)
    assert rep.line().endswith("50/1000 samples, 50,000 tokens, compiling 3 shapes, no ETA yet")
    pending[0] = 1
    assert "compiling 1 shape, no ETA yet" in rep.line()
    pending[0] = 0
    for _ in range(10):  # compiled: 10 samples every 2 s
        clock.t += 2.0
        rep.advance(10, 10_000)
    assert rep.rates() == (5.0, 5000.0)  # not dragged down by the 30 s batches before
    assert rep.line().endswith("150/1000 samples, 150,000 tokens, 5.0k tokens/s, ETA 2:50")
