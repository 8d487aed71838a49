"""Progress of a training run: a rich bar (tokens, tokens/s, FVU, L0, ETA) on a terminal, a plain
line every ``log_every_s`` seconds anywhere else (cluster logs, CI, pipes).

Rate and ETA come from the last ``window_s`` seconds, not from the start, which includes the
compiles. (The sae package cannot import pipeline/progress.py, extract's reporter; this one
counts steps and shows training metrics instead of samples.)
"""

from __future__ import annotations

import sys
import time
from collections import deque

from arclens.formatting import fmt_eta, fmt_rate


class TrainProgress:
    def __init__(self, total_steps: int, batch_tokens: int, *, start_step: int = 0, enabled: bool = True,
                 stream=None, log_every_s: float = 30.0, window_s: float = 60.0, clock=time.perf_counter):
        self.total = total_steps
        self.batch_tokens = batch_tokens
        self.step = start_step
        self.metrics: dict = {}
        self._clock = clock
        self._stream = stream or sys.stderr
        self._enabled = enabled
        self._log_every = log_every_s
        self._window_s = window_s
        self._last_log = clock()
        self._points: deque[tuple[float, int]] = deque([(clock(), start_step)])
        self._rich = None
        if enabled and getattr(self._stream, "isatty", lambda: False)():
            self._rich = _rich_bar(total_steps, start_step, self._stream)

    def tokens_per_s(self) -> float | None:
        (t0, s0), (t1, s1) = self._points[0], self._points[-1]
        return (s1 - s0) * self.batch_tokens / (t1 - t0) if t1 > t0 and s1 > s0 else None

    def eta_s(self) -> float | None:
        rate = self.tokens_per_s()
        return (self.total - self.step) * self.batch_tokens / rate if rate else None

    def advance(self, step: int, metrics: dict | None = None) -> None:
        now = self._clock()
        self.step = step
        if metrics:
            self.metrics = metrics
        self._points.append((now, step))
        while len(self._points) > 2 and self._points[1][0] <= now - self._window_s:
            self._points.popleft()
        if self._rich is not None:
            progress, task = self._rich
            progress.update(task, completed=step, info=self._info())
        elif self._enabled and (now - self._last_log >= self._log_every or step >= self.total):
            self._last_log = now
            print(self.line(), file=self._stream, flush=True)

    def _info(self) -> str:
        rate = self.tokens_per_s()
        parts = [f"{fmt_rate(rate)} tok/s" if rate else ""]
        if "fvu" in self.metrics:
            parts.append(f"FVU {self.metrics['fvu']:.3f}")
        if "l0" in self.metrics:
            parts.append(f"L0 {self.metrics['l0']:.1f}")
        if "dead" in self.metrics:
            parts.append(f"dead {self.metrics['dead']:.1%}")
        return "  ".join(p for p in parts if p)

    def line(self) -> str:
        return (f"arclens train-sae: step {self.step}/{self.total}, {self.step * self.batch_tokens:,} tokens, "
                f"{self._info() or 'tok/s ?'}, ETA {fmt_eta(self.eta_s())}")

    def close(self) -> None:
        if self._rich is not None:
            self._rich[0].stop()
            self._rich = None


def _rich_bar(total: int, start: int, stream):
    try:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    except ImportError:
        return None
    progress = Progress(TextColumn("train-sae"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                        TextColumn("{task.fields[info]}"), TextColumn("ETA"), TimeRemainingColumn(),
                        console=Console(file=stream), transient=False)
    task = progress.add_task("train-sae", total=total, completed=start, info="")
    progress.start()
    return progress, task
