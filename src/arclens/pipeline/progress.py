"""Progress while extracting, and the summary at the end.

On a terminal: a rich progress bar (samples, tokens/s, ETA). Anywhere else (cluster logs, CI,
pipes) or without rich: one plain line on stderr every ``log_every_s`` seconds, because a bar
redrawn into a log file is noise.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from arclens.formatting import fmt_eta, fmt_rate


class ProgressReporter:
    """Counts samples and tokens as batches are written; rate and ETA come from the last
    ``window_s`` seconds of progress, not from the start: the start includes loading and the first
    compiles, and a run's first batches are its longest prompts, so an average since the start
    would overstate the time left by an order of magnitude early on.

    ``compiling()`` (the capture runner's count of shapes still compiling): while it is above 0
    the line says so instead of an ETA, and the rate window restarts once compiling ends, since
    batches that waited for a compile say nothing about throughput."""

    def __init__(self, total_samples: int, *, enabled: bool = True, log_every_s: float = 30.0, stream=None,
                 window_s: float = 60.0, clock=time.perf_counter, compiling=None):
        self.total = total_samples
        self.samples = 0
        self.tokens = 0
        self._clock = clock
        self._t0 = clock()
        self._lock = threading.Lock()
        self._stream = stream or sys.stderr
        self._log_every = log_every_s
        self._last_log = self._t0
        self._window_s = window_s
        self._points: deque[tuple[float, int, int]] = deque()  # (time, samples, tokens) after each advance
        self._rich = None
        self._enabled = enabled
        self._compiling = compiling or (lambda: 0)
        if enabled and getattr(self._stream, "isatty", lambda: False)():
            self._rich = _rich_bar(total_samples, self._stream)

    def advance(self, samples: int, tokens: int) -> None:
        with self._lock:
            self.samples += samples
            self.tokens += tokens
            now = self._clock()
            if self._compiling():
                self._points.clear()  # the rate restarts from the last point seen while compiling
            self._points.append((now, self.samples, self.tokens))
            # Keep one point at or before the window's start, so the window always spans it.
            while len(self._points) > 2 and self._points[1][0] <= now - self._window_s:
                self._points.popleft()
            if self._rich is not None:
                progress, task = self._rich
                rate = self.rates()[1]
                n = self._compiling()
                text = f"compiling {n} shape{'s' * (n > 1)}" if n else f"{fmt_rate(rate)} tok/s" if rate else ""
                progress.update(task, advance=samples, tok_rate=text)
            elif self._enabled and now - self._last_log >= self._log_every:
                self._last_log = now
                print(self.line(), file=self._stream, flush=True)

    def rates(self) -> tuple[float | None, float | None]:
        """(samples/s, tokens/s) over the recent window; None before two batches have finished."""
        if len(self._points) < 2:
            return None, None
        (t0, s0, k0), (t1, s1, k1) = self._points[0], self._points[-1]
        dt = t1 - t0
        if dt <= 0:
            return None, None
        return (s1 - s0) / dt, (k1 - k0) / dt

    def line(self) -> str:
        head = f"arclens extract: {self.samples}/{self.total} samples, {self.tokens:,} tokens, "
        n = self._compiling()
        if n:
            return head + f"compiling {n} shape{'s' * (n > 1)}, no ETA yet"
        sample_rate, token_rate = self.rates()
        eta = None
        if sample_rate:
            eta = max(self.total - self.samples, 0) / sample_rate
        rate = f"{fmt_rate(token_rate)} tokens/s" if token_rate is not None else "tokens/s ?"
        return head + f"{rate}, ETA {fmt_eta(eta)}"

    def close(self) -> None:
        if self._rich is not None:
            self._rich[0].stop()
            self._rich = None


def _rich_bar(total: int, stream):
    try:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    except ImportError:
        return None
    progress = Progress(
        TextColumn("extract"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("samples"),
        TextColumn("{task.fields[tok_rate]}"),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(file=stream),
        transient=False,
    )
    task = progress.add_task("extract", total=total, tok_rate="")
    progress.start()
    return progress, task


@dataclass
class RunSummary:
    samples: int = 0
    tokens_stored: int = 0
    prompt_tokens: int = 0  # real tokens run through the model
    padded_tokens: int = 0  # B * T summed over batches
    shards: int = 0
    bytes: int = 0
    batches: int = 0
    shapes: set = field(default_factory=set)
    wall_s: float = 0.0
    compile_s: float = 0.0
    time_split: dict = field(default_factory=dict)  # stage -> busy seconds
    skipped_committed: int = 0
    stopped_by: str | None = None
    complete: bool = False  # every sample of the tasks run is committed
    lease_lost: bool = False  # a worker's claim was lost mid-unit (someone else finishes the unit)

    @property
    def padding_fraction(self) -> float:
        return 0.0 if not self.padded_tokens else 1.0 - self.prompt_tokens / self.padded_tokens

    def add(self, other: RunSummary) -> None:
        """Fold in one more run of the same job (a worker's next unit)."""
        for name in ("samples", "tokens_stored", "prompt_tokens", "padded_tokens", "shards", "bytes", "batches",
                     "skipped_committed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.shapes |= other.shapes
        for stage, seconds in other.time_split.items():
            self.time_split[stage] = self.time_split.get(stage, 0.0) + seconds
        self.stopped_by = self.stopped_by or other.stopped_by

    def lines(self) -> list[str]:
        rate = self.prompt_tokens / max(self.wall_s, 1e-9)
        split = ", ".join(f"{k} {v:.1f}s" for k, v in self.time_split.items())
        out = [
            f"samples written   {self.samples:,}" + (f" (skipped {self.skipped_committed:,} already committed)" if self.skipped_committed else ""),
            f"tokens stored     {self.tokens_stored:,}",
            f"shards / bytes    {self.shards:,} / {self.bytes:,}",
            f"prompt tokens     {self.prompt_tokens:,} in {self.batches:,} batches, {len(self.shapes)} shapes, padding {self.padding_fraction:.1%}",
            f"wall time         {self.wall_s:.1f}s ({fmt_rate(rate)} prompt tokens/s; compile {self.compile_s:.1f}s)",
            f"busy time         {split}",
        ]
        if self.stopped_by:
            out.append(f"stopped by        {self.stopped_by}: in-flight work committed; rerun the same command to resume")
        return out
