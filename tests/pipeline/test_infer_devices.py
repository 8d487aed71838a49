"""`arclens infer --devices N`: one model replica per local device, the same files as one device.

The runs are subprocesses on a host of two CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=2).
Workers generate with implicit device-to-device transfers disallowed, so a two-device run that
succeeds also shows that every jitted call of generate() ran on its worker's device.
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from tests.support.cli import run_cli
from tests.support.stores import stored

from arclens.cli import main as cli_main
from arclens.data.loaders import load_tasks

# Three small ARC-AGI-1 evaluation tasks (as test_infer.py); 6ea4a07e has two test inputs.
TASK_IDS = ("66e6c45b", "6ea4a07e", "be03b35f")
HOOKS = ("--hooks", "blocks.1.hook_resid_post", "blocks.3.hook_mlp_out")
TWO_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}


@pytest.fixture(scope="module")
def tasks_file(tmp_path_factory):
    tasks = {t.task_id: t.to_json() for t in load_tasks("arc-agi-1/evaluation") if t.task_id in TASK_IDS}
    path = tmp_path_factory.mktemp("tasks") / "challenges.json"
    path.write_text(json.dumps(tasks))
    return str(path)


@pytest.fixture(scope="module")
def infer(tiny_model_dir, tasks_file, tmp_path_factory):
    # The runs of this module share a compilation cache of their own (the tests' time is compiling;
    # XLA keys its programs by device, so device 1's are compiled by the first two-device run).
    cache = tmp_path_factory.mktemp("xla-cache")

    def run(out, *extra):
        # --batch-size 1 with 8 samples: two windows (4 samples per window), 8 batches to share out.
        return run_cli(["infer", "--model", str(tiny_model_dir), "--tasks", tasks_file, "--out", str(out),
                        "--predictions-per-task", "2", "--max-new-tokens", "12", "--batch-size", "1",
                        "--dtype", "float32", *HOOKS, *extra], timeout=240, **TWO_DEVICES,
                       ARCLENS_COMPILE_CACHE=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0)

    return run


@pytest.fixture(scope="module")
def runs(infer, tmp_path_factory):
    base = tmp_path_factory.mktemp("devices")
    out = {}
    for n in (1, 2):
        r = infer(base / f"d{n}", "--devices", str(n))
        assert r.returncode == 0, r.stderr
        out[n] = (base / f"d{n}", r)
    return out


def _batches_per_device(stdout: str) -> list[int]:
    line = r"^devices: (\d+) \(cpu\), one model replica each; batches per device: ([\d, ]+)$"
    m = re.search(line, stdout, re.MULTILINE)
    assert m, stdout
    counts = [int(x) for x in m.group(2).split(",")]
    assert len(counts) == int(m.group(1))
    return counts


def test_two_devices_write_the_same_files_as_one(runs):
    (d2, r2), (d1, r1) = runs[2], runs[1]
    assert _batches_per_device(r1.stdout) == [8]
    two = _batches_per_device(r2.stdout)
    assert sum(two) == 8 and min(two) >= 1, two  # both devices generated
    assert "generating on 2 device(s)" in r2.stderr and "window 2/2" in r2.stderr
    for name in ("submission.json", "predictions.jsonl"):
        assert (d2 / name).read_bytes() == (d1 / name).read_bytes(), name
    assert len((d1 / "predictions.jsonl").read_text().splitlines()) == 8

    a2, a1 = stored(d2 / "activations"), stored(d1 / "activations")
    assert sorted(a2) == sorted(a1) and len(a1) == 8
    for key, (sample, arrays) in a1.items():
        sample2, arrays2 = a2[key]
        assert sample2 == sample
        assert set(arrays2) == set(arrays)
        for name, v in arrays.items():
            np.testing.assert_allclose(np.asarray(arrays2[name], np.float64), np.asarray(v, np.float64), atol=1e-6)


def test_resume_on_two_devices_redoes_only_the_dropped_task(runs, infer, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(runs[1][0], out)
    lines = (out / "predictions.jsonl").read_text().splitlines(keepends=True)
    keep = [ln for ln in lines if json.loads(ln)["task_id"] != "6ea4a07e"]
    assert len(keep) == 4
    (out / "predictions.jsonl").write_text("".join(keep))
    r = infer(out, "--devices", "2")
    assert r.returncode == 0, r.stderr
    assert "tasks: 3 (2 already predicted, skipped)" in r.stdout
    assert "samples generated: 4," in r.stdout
    assert sum(_batches_per_device(r.stdout)) == 4
    now = (out / "predictions.jsonl").read_text().splitlines(keepends=True)
    assert now[:4] == keep  # the done tasks' lines are untouched; the redone task's are appended
    assert sorted(now) == sorted(lines)  # and equal the first run's, byte for byte (same batch shapes)
    assert (out / "submission.json").read_bytes() == (runs[1][0] / "submission.json").read_bytes()
    # the dropped task's activations were committed already: not written twice (stored() checks)
    assert sorted(stored(out / "activations")) == sorted(json.loads(ln)["key"] for ln in lines)


def test_more_devices_than_the_host_has_is_a_user_error(infer, tmp_path):
    r = infer(tmp_path / "o", "--devices", "3")
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("arclens: error: --devices 3:"), r.stderr
    assert "2 local cpu device(s)" in err[0] and "--devices 2 or fewer" in err[0]
    assert not (tmp_path / "o").exists()  # refused before --out is touched


def test_bad_device_options_in_process(tiny_model_dir, tasks_file, tmp_path, capsys):
    base = ["infer", "--model", str(tiny_model_dir), "--tasks", tasks_file, "--out", str(tmp_path / "o")]
    assert cli_main([*base, "--devices", "0"]) == 2
    assert cli_main([*base, "--devices", "2"]) == 2  # this pytest process has one CPU device
    assert cli_main([*base, "--mesh", "1,1"]) == 2  # no tensor-parallel infer
    assert cli_main([*base, "--num-processes", "2"]) == 2  # multi-host stays refused
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("arclens: error:") for line in err)
    assert "--devices: expected a positive number, got 0" in err[0]
    assert "--devices 2: this host has 1 local cpu device(s)" in err[1]
    assert "--mesh is accepted by extract only" in err[2] and "--devices" in err[2]
    assert "split the tasks with `arclens streams`" in err[3]


def test_window_batches_are_the_batches_of_one_generate_call(tiny_model_dir):
    """What makes the output independent of --devices: each batch of ``window_batches``, given to
    generate() alone, is computed exactly as one generate() over the whole window computes it."""
    import jax.numpy as jnp

    from arclens.model.config import QwenConfig
    from arclens.model.generate import generate
    from arclens.model.loading import load_params
    from arclens.pipeline.infer import window_batches

    config = QwenConfig.from_pretrained(tiny_model_dir)
    params = load_params(tiny_model_dir, config, jnp.float32)
    rng = np.random.default_rng(0)
    lengths = [5, 9, 9, 3, 7, 9, 5, 12, 3]  # ties: the stable order must be kept
    prompts = [rng.integers(0, config.vocab_size, n).astype(np.int32) for n in lengths]
    kw = {"max_new_tokens": 3, "batch_size": 4, "length_bucket": 16}
    whole = list(generate(params, config, prompts, **kw))
    batches = window_batches(lengths, 4)
    assert [len(b) for b in batches] == [4, 4, 1]
    assert [i for i, _ in whole] == [int(i) for b in batches for i in b]  # the order generate() yields in
    parts = [(int(b[j]), g) for b in batches for j, g in generate(params, config, [prompts[i] for i in b], **kw)]
    for (i, g), (k, h) in zip(whole, parts, strict=True):
        assert i == k
        np.testing.assert_array_equal(g.token_ids, h.token_ids)
        np.testing.assert_array_equal(g.logprobs, h.logprobs)  # the same shapes: bit for bit
