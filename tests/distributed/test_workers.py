"""Independent `arclens extract` workers sharing one store, on moto's S3 server and on a local folder.

Worker A claims a unit and is killed with SIGKILL in the middle of it (after two of its four
samples are committed and a third shard is written but not committed). Workers B and C, started
while A runs, and D, started after A died, share the other units. B and C are patient (a long
ttl of their own: a worker never takes a claim over sooner than its own ttl) and leave once nothing
is left to claim (--idle-exit); D stays, watches A's claim go stale for A's ttl,
takes it over (epoch 1), extracts only the two uncommitted samples and marks the unit done. The store then holds every sample exactly once
and `arclens verify` passes.

Both backends run at the same time (in two threads), so their ttl waits overlap.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from tests.support.cli import start_cli, wait_ok
from tests.support.stores import stored
from tests.support.tasks import write_small_tasks

from arclens.cli import main
from arclens.distributed.claims import read_board
from arclens.store import fs as storefs

TTL_S = 6  # A's and D's claim ttl
PATIENT_TTL_S = 600  # B's and C's: they leave (idle exit) long before they would take A's claim
N_TASKS, TASKS_PER_UNIT, PREDICTIONS = 8, 2, 2
OPTIONS = ["--layers", "1", "3", "--activation", "residual", "--predictions-per-task", str(PREDICTIONS),
           "--dtype", "float32", "--tokens-per-batch", "1024", "--shard-mb", "0.1", "--num-workers", "4"]
VICTIM_UNIT = "tasks-000000-000002"  # worker 0's first choice
ALL_UNITS = {f"tasks-{i:06d}-{i + TASKS_PER_UNIT:06d}" for i in range(0, N_TASKS, TASKS_PER_UNIT)}
ALL_KEYS = sorted(f"task{t:03d}/0/{a}" for t in range(N_TASKS) for a in range(PREDICTIONS))


def _wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.2)


def scenario(dest: str, opts, env: dict, folder, model_dir) -> None:
    folder.mkdir()
    tasks = write_small_tasks(folder / "tasks.json", N_TASKS)
    fs, root = storefs.get_fs(dest, opts)

    def worker(i: int, *flags, ttl=TTL_S, **extra):
        log = folder / f"worker{i}.log"
        args = ["extract", "--model", model_dir, "--tasks", tasks, "--out", dest, *OPTIONS, "--worker-id", i,
                "--claim-ttl", ttl, *flags]
        return start_cli(args, log, **{**env, **extra}), log

    # A (worker 0 starts with the first unit) dies by SIGKILL at its third shard.
    a, a_log = worker(0, "--tasks-per-unit", TASKS_PER_UNIT, ARCLENS_TEST_CRASH_AT="shard-written:3")
    _wait_for(lambda: VICTIM_UNIT in read_board(fs, root).units or a.poll() is not None, 180, "A never claimed")
    others = [worker(i, "--idle-exit", 2, ttl=PATIENT_TTL_S) for i in (1, 2)]  # the unit size from A's plan
    assert a.wait(180) == -9, a_log.read_text()[-3000:]
    assert len(stored(dest, opts)) == 2  # A committed two of its four samples, then died
    d, d_log = worker(3)  # late: A is already dead
    wait_ok([p for p, _ in others], [log for _, log in others])
    wait_ok([d], [d_log])

    for _, log in others:
        assert "took over" not in log.read_text()
    log = d_log.read_text()
    assert f"took over {VICTIM_UNIT} (epoch 1)" in log, log[-3000:]
    assert f"unit {VICTIM_UNIT}: 2 samples to extract (2 already committed)" in log
    assert read_board(fs, root).done == ALL_UNITS
    assert sorted(stored(dest, opts)) == ALL_KEYS  # stored() fails on any key stored twice


@pytest.mark.slow
def test_killed_worker_is_taken_over_on_s3_and_local(tmp_path, tiny_model_dir, s3_remote, capsys):
    runs = {
        "s3": (s3_remote.url, s3_remote.storage_options, s3_remote.env),
        "local": (str(tmp_path / "store"), None, {}),
    }
    with ThreadPoolExecutor(len(runs)) as pool:
        futures = [pool.submit(scenario, dest, opts, env, tmp_path / name, tiny_model_dir)
                   for name, (dest, opts, env) in runs.items()]
        for f in futures:
            f.result()
    capsys.readouterr()
    for dest, _opts, env in runs.values():
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, str(v))
            assert main(["verify", dest]) == 0
        assert "OK" in capsys.readouterr().out


@pytest.mark.slow
def test_sigterm_commits_releases_and_exits_0(tmp_path, tiny_model_dir):
    """A preempted worker (SIGTERM) commits what it has, releases its unit and exits 0; the next
    worker takes the released unit at once (the ttl is a minute here, and nobody waits for it)."""
    import signal

    dest = str(tmp_path / "store")
    tasks = write_small_tasks(tmp_path / "tasks.json", 12)
    fs, root = storefs.get_fs(dest)
    env = {}
    args = ["extract", "--model", tiny_model_dir, "--tasks", tasks, "--out", dest, *OPTIONS, "--claim-ttl", "60",
            "--tasks-per-unit", "1"]
    first, first_log = start_cli([*args, "--worker-id", "0"], tmp_path / "first.log", **env), tmp_path / "first.log"
    _wait_for(lambda: bool(storefs.list_names(fs, f"{root}/index")) or first.poll() is not None, 180, "no commit")
    first.send_signal(signal.SIGTERM)
    wait_ok([first], [first_log])
    board = read_board(fs, root)
    assert 0 < len(board.done) < 12, first_log.read_text()[-2000:]
    for unit, state in board.units.items():
        assert unit in board.done or state.released, f"{unit} left claimed by a stopped worker"

    started = time.monotonic()
    second_log = tmp_path / "second.log"
    wait_ok([start_cli([*args, "--worker-id", "1"], second_log, **env)], [second_log])
    assert time.monotonic() - started < 60  # released units are taken without waiting for the ttl
    assert read_board(fs, root).done == {f"tasks-{i:06d}-{i + 1:06d}" for i in range(12)}
    assert sorted(stored(dest)) == sorted(f"task{t:03d}/0/{a}" for t in range(12) for a in range(PREDICTIONS))
