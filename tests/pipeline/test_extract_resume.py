"""Resume after `kill -9` and after SIGTERM gives a store byte-identical to an uninterrupted run.

The runs are real `arclens extract` processes that signal themselves at named points
(ARCLENS_TEST_CRASH_AT, src/arclens/crashpoints.py). The points are seams of the code itself, so
nothing is monkeypatched and the shard publisher runs as it does by default, in background
threads (two kills and a SIGTERM at random points), then again inline (``--publish-threads 0``).
In bf16, the default: every batch of a resumed run is the batch an uninterrupted run computes
(the schedule is a function of the whole sample set), so every stored byte agrees. Shards a kill
left without their index file stay invisible (the reader and `arclens verify` see only commits).
"""

from __future__ import annotations

import os
import random
import signal

import pytest
from tests.support.cli import extract_args, run_cli
from tests.support.stores import stored
from tests.support.tasks import write_tasks

from arclens.cli import main
from arclens.crashpoints import POINTS

HOOKS = ["blocks.1.hook_resid_post", "blocks.3.hook_mlp_out"]
# ~380-token prompts at 2 hooks x 64 in bf16: ~0.1 MB a sample, so 0.15 MB shards hold one or two
# samples and one run commits many shards; 1024-token batches give several batches per run.
OPTIONS = ["--hooks", *HOOKS, "--predictions-per-task", "2", "--tokens-per-batch", "1024", "--shard-mb", "0.15"]


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


def _run(setup, dest, extra, crash_at=None):
    env = dict(setup["env"])
    if crash_at:
        env["ARCLENS_TEST_CRASH_AT"] = crash_at
    return run_cli(extract_args(setup["model"], setup["tasks"], dest, *OPTIONS, *extra), **env)


def _committed(dest) -> set[str]:
    from arclens.store.writer import committed_keys

    return committed_keys(str(dest))


def _assert_byte_identical(setup, dest, why: str):
    got = stored(dest)  # raises on a key stored twice
    ref = setup["reference"]
    assert set(got) == set(ref), why
    for key, (sample, arrays) in got.items():
        want_sample, want = ref[key]
        assert sample == want_sample, (why, key)
        assert set(arrays) == set(want), (why, key)
        for name, arr in want.items():
            if name == "sample":
                continue  # the row in its shard's sample table: where it was stored, not what
            assert arrays[name].dtype == arr.dtype and arrays[name].shape == arr.shape, (why, key, name)
            assert arrays[name].tobytes() == arr.tobytes(), f"{why}: {key} {name} differs"
    assert str(next(iter(got.values()))[1][HOOKS[0]].dtype) == "bfloat16"
    assert main(["verify", str(dest)]) == 0


@pytest.mark.parametrize("publisher", ["background", "inline"])
def test_two_kills_and_a_sigterm_then_resume_is_byte_identical(setup, publisher, capsys):
    # The same points on every CI run (HYPOTHESIS_PROFILE=ci, as for the property tests); new ones
    # on each `make test`. The message of any failure names them.
    seed = 0 if os.environ.get("HYPOTHESIS_PROFILE") == "ci" else random.randrange(1 << 30)
    rng = random.Random(f"{seed}-{publisher}")
    kills = [f"{point}:{rng.randint(1, 2)}" for point in rng.sample(POINTS, 2)]
    term = f"{rng.choice(POINTS)}:{rng.randint(1, 2)}=TERM"
    why = f"seed {seed}, {publisher} publisher, kills at {kills}, SIGTERM at {term}"
    extra = [] if publisher == "background" else ["--publish-threads", "0"]
    dest = setup["root"] / f"crashed-{publisher}"
    total = len(setup["reference"])
    before: set[str] = set()
    for point in kills:
        proc = _run(setup, dest, extra, point)
        assert proc.returncode == -signal.SIGKILL, (why, point, proc.returncode, proc.stderr[-2000:])
        now = _committed(dest)
        assert before <= now and len(now) < total, (why, point)  # commits survive; the kill lost the rest
        before = now

    # SIGTERM: exit 0, and everything dispatched is committed.
    proc = _run(setup, dest, extra, term)
    assert proc.returncode == 0, (why, proc.stderr[-2000:])
    assert "stopped by        SIGTERM" in proc.stdout, why
    if before:
        assert f"skipped {len(before)} already committed" in proc.stdout, why
    written = int(next(line for line in proc.stdout.splitlines() if line.startswith("samples written")).split()[2])
    now = _committed(dest)
    # Reported as written == committed. (What was in flight can be all that was left: then the
    # final run below finds nothing to do.)
    assert len(now) == len(before) + written <= total, why

    proc = _run(setup, dest, extra)
    assert proc.returncode == 0, (why, proc.stderr[-2000:])
    assert f"skipped {len(now)} already committed" in proc.stdout or len(now) == total, why
    _assert_byte_identical(setup, dest, why)
    capsys.readouterr()
