"""Never lose a day: kill -9, SIGTERM and a kill inside a checkpoint commit, then the same
command resumes and ends with the same weights as a run that was never interrupted (fp32, the
bar is 1e-6; the step is deterministic, so they are in fact identical). A resume with other
settings is refused, naming each differing field, and leaves the checkpoint alone.

The interruptions land at exact points through ``ARCLENS_TEST_CRASH_AT`` (arclens/crashpoints.py):
the process really receives SIGKILL / SIGTERM from itself there.
"""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest
from safetensors.numpy import load_file
from tests.support.cli import run_cli
from tests.support.planted import _planted_small, _planted_transcoder  # noqa: F401 - fixtures

HOOK = "blocks.0.hook_resid_post"
STEPS = 16  # batches of 512 tokens; checkpoints every 4 steps


def _args(store, out, *extra):
    return ["train-sae", "--store", store, "--out", str(out), "--hooks", HOOK, "--d-sae", "48", "--k", "4",
            "--tokens", str(STEPS * 512), "--batch-tokens", "512", "--checkpoint-every", "4", "--quiet", *extra]


def _weights(out) -> dict[str, np.ndarray]:
    return load_file(f"{out}/{HOOK}/sae_weights.safetensors")


def _latest_step(out) -> int:
    return json.loads((out / "checkpoints" / "latest.json").read_text())["step"]


@pytest.fixture(scope="module")
def reference(planted_small, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    r = run_cli(_args(planted_small[0], out))
    assert r.returncode == 0, r.stderr
    assert not (out / "checkpoints").exists(), "checkpoints are removed when the run ends"
    return _weights(out)


def _assert_same(out, reference):
    got = _weights(out)
    assert sorted(got) == sorted(reference)
    for name in reference:
        np.testing.assert_allclose(got[name], reference[name], rtol=0, atol=1e-6, err_msg=name)


def test_sigterm_then_kill9_then_kill_inside_a_commit_resume_to_the_same_weights(planted_small, reference,
                                                                                  tmp_path):
    store, out = planted_small[0], tmp_path / "out"
    # 1. SIGTERM after the 6th step: that step finishes, a checkpoint is committed, exit 0.
    r = run_cli(_args(store, out), ARCLENS_TEST_CRASH_AT="sae-step:6=TERM")
    assert r.returncode == 0, r.stderr
    assert "stopped by SIGTERM after step 6/16" in r.stdout
    assert _latest_step(out) == 6
    assert not (out / HOOK / "sae_weights.safetensors").exists()
    # 2. The same command resumes; kill -9 at its 5th step (step 11), after the step-8 checkpoint.
    r = run_cli(_args(store, out), ARCLENS_TEST_CRASH_AT="sae-step:5")
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert _latest_step(out) == 8
    # 3. Resume again; kill -9 inside the step-12 commit: the file is written, latest.json is not.
    r = run_cli(_args(store, out), ARCLENS_TEST_CRASH_AT="sae-checkpoint-written")
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert _latest_step(out) == 8
    assert (out / "checkpoints" / "step-000000012.safetensors").exists()  # written, never committed
    # 4. The last resume runs to the end: the weights of a run that was never interrupted.
    r = run_cli(_args(store, out))
    assert r.returncode == 0, r.stderr
    _assert_same(out, reference)
    lines = [json.loads(x) for x in (out / HOOK / "metrics.jsonl").read_text().splitlines()]
    steps = [x["step"] for x in lines]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS, "metrics continue across resumes, no repeats"
    # 5. Run again, the store named another way: nothing to do, the same weights.
    r = run_cli(_args("file://" + store, out))
    assert r.returncode == 0 and "already trained" in r.stdout
    _assert_same(out, reference)


def test_resume_with_other_settings_is_refused_naming_each_field(planted_small, tmp_path):
    store, out = planted_small[0], tmp_path / "out"
    r = run_cli(_args(store, out), ARCLENS_TEST_CRASH_AT="sae-step:6")
    assert r.returncode == -signal.SIGKILL
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    r = run_cli(["train-sae", "--store", store, "--out", str(out), "--hooks", HOOK, "--d-sae", "48", "--k", "5",
                 "--tokens", str(STEPS * 512), "--batch-tokens", "512", "--lr", "0.001", "--quiet"])
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "refusing to resume" in err[0]
    assert "saes[0].k: 4 -> 5" in err[0] and "lr: None -> 0.001" in err[0]
    assert "Traceback" not in r.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before
