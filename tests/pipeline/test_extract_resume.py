"""Resume after `kill -9` and after SIGTERM: every sample exactly once, with correct values.

The runs are real `arclens extract` processes that kill themselves at named points
(ARCLENS_TEST_CRASH_AT, src/arclens/pipeline/crashpoints.py), so each crash lands exactly where
the test says: mid-batch, mid-shard-write, between a shard and its index file.
"""

from __future__ import annotations

import signal

import numpy as np
import pytest
from tests.support.cli import extract_args, run_cli
from tests.support.reference import rel_err
from tests.support.stores import stored
from tests.support.tasks import write_tasks

from arclens.cli import main

HOOKS = ["blocks.1.hook_resid_post", "blocks.3.hook_mlp_out"]
# ~380-token prompts at 2 hooks x 64 x fp32: each sample is ~0.2 MB, so 0.3 MB shards hold one or
# two samples and one run commits many shards; 1024-token batches give several batches per run.
OPTIONS = ["--hooks", *HOOKS, "--dtype", "float32", "--predictions-per-task", "2",
           "--tokens-per-batch", "1024", "--shard-mb", "0.3"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("resume")
    tasks = write_tasks(root / "tasks.json", n_tasks=4, seed=1)
    reference = root / "reference"
    assert main(extract_args(tiny_model_dir, tasks, reference, *OPTIONS)) == 0
    # One compilation cache for every child process: each run then compiles nothing.
    env = {"JAX_COMPILATION_CACHE_DIR": root / "jax-cache", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    return {"root": root, "tasks": tasks, "model": tiny_model_dir, "reference": stored(reference), "env": env}


def _run(setup, dest, crash_at=None):
    env = dict(setup["env"])
    if crash_at:
        env["ARCLENS_TEST_CRASH_AT"] = crash_at
    return run_cli(extract_args(setup["model"], setup["tasks"], dest, *OPTIONS), **env)


def _committed(dest) -> set[str]:
    from arclens.store.writer import committed_keys

    return committed_keys(str(dest))


def _assert_complete_and_correct(setup, dest):
    got = stored(dest)  # raises on a key stored twice
    ref = setup["reference"]
    assert set(got) == set(ref)
    for key, (sample, arrays) in got.items():
        _, want = ref[key]
        for name in ("token_id", "position", "grid", "row", "col"):
            np.testing.assert_array_equal(arrays[name], want[name], err_msg=f"{key} {name}")
        for hook in HOOKS:
            assert rel_err(arrays[hook], want[hook]) <= 1e-5, (key, hook)
    assert main(["verify", str(dest)]) == 0


def test_kill_9_at_every_point_and_sigterm_then_resume(setup, capsys):
    # One store through a chain of runs (each run costs seconds of imports, so they are shared):
    # each resumes the previous one's store and is stopped at another point.
    dest = setup["root"] / "crashed"
    total = len(setup["reference"])
    before: set[str] = set()
    for point in ("sample-added:2", "batch-dispatched:2", "shard-writing:2", "shard-written:2"):
        proc = _run(setup, dest, point)
        assert proc.returncode == -signal.SIGKILL, (point, proc.returncode, proc.stderr[-2000:])
        now = _committed(dest)
        assert before <= now and len(now) < total, point  # commits survive; the kill lost the rest
        before = now
    leftovers = {p.name for p in (dest / "shards").iterdir()} - {f"{p.stem}.safetensors" for p in (dest / "index").iterdir()}
    assert leftovers  # the mid-write and before-index kills left uncommitted shard files behind

    # SIGTERM while batch 2 is on the device: exit 0, and everything dispatched is committed.
    proc = _run(setup, dest, "batch-dispatched:2=TERM")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "stopped by        SIGTERM" in proc.stdout
    assert f"skipped {len(before)} already committed" in proc.stdout
    written = int(next(line for line in proc.stdout.splitlines() if line.startswith("samples written")).split()[2])
    now = _committed(dest)
    assert written > 0 and len(now) == len(before) + written < total  # reported as written == committed

    proc = _run(setup, dest)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"skipped {len(now)} already committed" in proc.stdout
    _assert_complete_and_correct(setup, dest)
