"""A multi-process worker (2 processes x 2 CPU devices, jax.distributed on localhost) in a fleet:

- preempted (SIGTERM to both processes, caught by jax's preemption notifier): it stops at the
  preemption sync point within a batch, commits what it had, releases its unit and exits 0; a
  worker given another --tasks-per-unit is refused with one line; a rerun completes the store;
- frozen (SIGSTOP) past its claim's ttl while another worker takes its unit over and finishes it:
  once let go (SIGCONT) it commits nothing, and exits 0.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from tests.support.cli import free_port, run_cli, start_cli, wait_ok
from tests.support.stores import stored
from tests.support.tasks import write_small_tasks

from arclens.cli import main
from arclens.distributed.claims import read_board
from arclens.store import fs as storefs

PREDICTIONS = 2
OPTIONS = ["--layers", "1", "3", "--activation", "residual", "--predictions-per-task", str(PREDICTIONS),
           "--dtype", "float32", "--tokens-per-batch", "256", "--shard-mb", "0.05"]


def _keys(n_tasks: int) -> list[str]:
    return sorted(f"task{t:03d}/0/{a}" for t in range(n_tasks) for a in range(PREDICTIONS))


def _wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


def _index(dest) -> set[str]:
    """Committed index files (a hidden temporary file is a commit still being written)."""
    folder = dest / "index"
    return {p.name for p in folder.iterdir() if not p.name.startswith(".")} if folder.exists() else set()


def _two_process_worker(tmp_path, tag: str, model, tasks, dest, *flags):
    coordinator = f"127.0.0.1:{free_port()}"
    logs = [tmp_path / f"{tag}-p{i}.log" for i in range(2)]
    procs = [start_cli(["extract", "--model", model, "--tasks", tasks, "--out", dest, *OPTIONS, *flags,
                        "--coordinator", coordinator, "--num-processes", "2", "--process-id", str(i)],
                       logs[i], JAX_NUM_CPU_DEVICES=2) for i in range(2)]
    return procs, logs


@pytest.mark.slow
def test_a_preempted_two_process_worker_stops_commits_releases_and_exits_0(tmp_path, tiny_model_dir):
    ttl = 5
    tasks = write_small_tasks(tmp_path / "tasks.json", 16)
    dest = tmp_path / "store"
    fs, root = storefs.get_fs(str(dest))
    worker = ["--num-workers", "1", "--worker-id", "0", "--claim-ttl", str(ttl)]
    procs, logs = _two_process_worker(tmp_path, "first", tiny_model_dir, tasks, dest, *worker, "--tasks-per-unit", "4")
    try:
        _wait_for(lambda: bool(_index(dest)) or any(p.poll() is not None for p in procs), 180, "no commit")
        before = stored(dest)
        assert before, [log.read_text()[-2000:] for log in logs]
        t0 = time.monotonic()
        for p in procs:
            p.send_signal(signal.SIGTERM)  # what a TPU VM's shutdown sends every host of the slice
        wait_ok(procs, logs, timeout=120)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    elapsed = time.monotonic() - t0
    assert elapsed < ttl + 10, elapsed  # within a batch (and a claim's release), not after all the work
    out = logs[0].read_text()
    assert "stopped by        SIGTERM (preemption sync point)" in out, out[-3000:]
    after = stored(dest)
    assert set(before) <= set(after) < set(_keys(16))  # every commit kept; stopped before the end
    board = read_board(fs, root)
    assert len(board.done) < 4
    for unit, state in board.units.items():
        assert unit in board.done or state.released, f"{unit} left claimed by a stopped worker"

    # Another unit size is refused before anything is written.
    files = {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    proc = run_cli(["extract", "--model", tiny_model_dir, "--tasks", tasks, "--out", dest, *OPTIONS, *worker,
                    "--tasks-per-unit", "3"])
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and "--tasks-per-unit 3" in err[0] and "units of 4" in err[0], err
    assert {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()} == files

    # The rerun (the unit size from the store's plan) completes it: every sample exactly once.
    procs, logs = _two_process_worker(tmp_path, "rerun", tiny_model_dir, tasks, dest, *worker)
    wait_ok(procs, logs, timeout=240)
    assert sorted(stored(dest)) == _keys(16)  # stored() fails on a key committed twice
    assert len(read_board(fs, root).done) == 4
    assert main(["verify", str(dest)]) == 0


@pytest.mark.slow
def test_a_frozen_two_process_worker_commits_nothing_after_the_takeover(tmp_path, tiny_model_dir):
    ttl = 4
    tasks = write_small_tasks(tmp_path / "tasks.json", 12)
    dest = tmp_path / "store"
    fs, root = storefs.get_fs(str(dest))
    unit = "tasks-000000-000012"  # the whole task set: one unit
    # Shards of a few samples: commits land a few batches apart, and the freeze follows one at once
    # (a freeze inside a commit's last instant, after its check, is the one window no store closes).
    fleet = ["--num-workers", "2", "--claim-ttl", str(ttl), "--shard-mb", "0.4"]
    stale, stale_logs = _two_process_worker(tmp_path, "stale", tiny_model_dir, tasks, dest, *fleet, "--worker-id", "0",
                                            "--tasks-per-unit", "12")
    taker = None
    try:
        _wait_for(lambda: unit in read_board(fs, root).units or any(p.poll() is not None for p in stale), 180,
                  "the stale worker never claimed")
        taker_log = tmp_path / "taker.log"
        taker = start_cli(["extract", "--model", tiny_model_dir, "--tasks", tasks, "--out", dest, *OPTIONS, *fleet,
                           "--worker-id", "1"], taker_log)
        _wait_for(lambda: bool(_index(dest)) or any(p.poll() is not None for p in stale), 180, "no commit")
        for p in stale:
            os.kill(p.pid, signal.SIGSTOP)  # a VM frozen, both of its processes
        frozen = _index(dest)
        assert frozen and all(p.poll() is None for p in stale), [log.read_text()[-2000:] for log in stale_logs]
        # The taker sees the claim go stale for a ttl, takes it over (epoch 1) and finishes the unit.
        wait_ok([taker], [taker_log], timeout=180)
        assert read_board(fs, root).done == {unit}
        assert f"took over {unit} (epoch 1)" in taker_log.read_text()
        stale_index = {n for n in frozen if "-w0-" in n}
        for p in stale:
            os.kill(p.pid, signal.SIGCONT)
        wait_ok(stale, stale_logs, timeout=120)
    finally:
        for p in [*stale, *([taker] if taker else [])]:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
                p.kill()
    assert {n for n in _index(dest) if "-w0-" in n} == stale_index  # nothing committed after the takeover
    assert sorted(stored(dest)) == _keys(12)  # every sample exactly once
    assert main(["verify", str(dest)]) == 0
