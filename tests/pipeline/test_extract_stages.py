"""The stage machinery (overlap.py), the stop/crash hooks and per-sample slicing, without a model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from arclens.pipeline.overlap import DeviceClock, Stages
from arclens.pipeline.progress import RunSummary


def test_stages_run_in_order_with_bounded_queues():
    stages = Stages()
    a, b = stages.channel(2), stages.channel(2)
    seen, peak = [], []

    def produce():
        for i in range(50):
            a.put(i)
        a.close()

    def double():
        for x in a:
            peak.append(a._q.qsize())
            b.put(2 * x)
        b.close()

    stages.start("produce", produce)
    stages.start("double", double)
    stages.run_here(lambda: seen.extend(b))
    stages.join()
    assert seen == [2 * i for i in range(50)]
    assert max(peak) <= 2


def test_a_failing_stage_stops_every_stage_and_is_raised():
    stages = Stages()
    a, b = stages.channel(1), stages.channel(1)

    def produce():  # would block forever on the full queue if nobody noticed the failure
        for i in range(10_000):
            a.put(i)
        a.close()

    def fail():
        for x in a:
            if x == 3:
                raise RuntimeError("writer broke")
            b.put(x)
        b.close()

    stages.start("produce", produce)
    stages.start("fail", fail)
    t0 = time.perf_counter()
    stages.run_here(lambda: [None for _ in b])
    with pytest.raises(RuntimeError, match="writer broke"):
        stages.join()
    assert time.perf_counter() - t0 < 5


def test_device_clock_counts_overlapping_batches_once():
    clock = DeviceClock()
    clock.completed(0.0, 1.0)  # batch 1 ran 0..1
    clock.completed(0.1, 1.5)  # batch 2 queued behind it: 1..1.5
    clock.completed(3.0, 3.2)  # the device idled 1.5..3
    assert clock.seconds == pytest.approx(1.7)


def test_sample_record_keeps_only_real_tokens():
    from arclens.pipeline.writing import sample_record
    from arclens.prompts import Augmentation, Sample

    n, t = 5, 8
    roles = np.arange(n, dtype=np.int16)
    s = Sample("k/0/0", "k", 0, 0, Augmentation.identity(0), "", np.arange(10, 10 + n, dtype=np.int32), roles,
               roles + 1, roles + 2)
    row = {"h": np.arange(t * 3, dtype=np.float32).reshape(t, 3)}
    meta, arrays = sample_record(s, row, "all")
    assert meta["prompt_tokens"] == n and arrays["h"].shape == (n, 3)
    np.testing.assert_array_equal(arrays["h"], row["h"][:n])
    np.testing.assert_array_equal(arrays["position"], np.arange(n))
    last = {"h": row["h"][n - 1 : n]}  # the device gathered the last real token already
    meta, arrays = sample_record(s, last, "last")
    np.testing.assert_array_equal(arrays["position"], [n - 1])
    np.testing.assert_array_equal(arrays["token_id"], [14])
    np.testing.assert_array_equal(arrays["col"], [6])


def test_summary_lines_name_the_time_split():
    s = RunSummary(samples=3, tokens_stored=30, prompt_tokens=30, padded_tokens=40, shards=1, bytes=100,
                   wall_s=2.0, time_split={"tokenize": 0.1, "device": 1.0, "write": 0.2})
    text = "\n".join(s.lines())
    assert "padding 25.0%" in text and "device 1.0s" in text and "tokens stored     30" in text


@pytest.mark.parametrize("spec,expected", [("sample-added", -signal.SIGKILL), ("sample-added:2", -signal.SIGKILL),
                                           ("sample-added:3=TERM", -signal.SIGTERM), ("shard-written", 0),
                                           ("sample-added:4", 0)])
def test_crash_point_hits_the_nth_visit(spec, expected):
    code = "from arclens.crashpoints import crash_point\nfor _ in range(3): crash_point('sample-added')\n"
    proc = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, ARCLENS_TEST_CRASH_AT=spec), check=False)
    assert proc.returncode == expected


def test_stop_request_turns_sigterm_into_a_flag():
    from arclens.pipeline.stopping import StopRequest

    stop = StopRequest()
    with stop.installed():
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100):
            if stop.is_set():
                break
            time.sleep(0.01)
    assert stop.is_set() and stop.signal_name == "SIGTERM"
    assert threading.current_thread() is threading.main_thread()
