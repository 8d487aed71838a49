"""Bad input to `arclens extract`: exit 2, one line on stderr naming the problem, nothing written."""

from __future__ import annotations

import json
import shutil

import pytest
from tests.support.cli import extract_args
from tests.support.tasks import write_tasks

from arclens.cli import main

GOOD = ["--hooks", "blocks.1.hook_resid_post", "--dtype", "float32", "--predictions-per-task", "1"]


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    return write_tasks(tmp_path_factory.mktemp("bad") / "tasks.json", n_tasks=2)


def _fails_cleanly(capsys, argv, dest, *words):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for w in words:
        assert w in err[0], err[0]
    assert not dest.exists() or not any(dest.iterdir()), "something was written"
    return err[0]


def test_unknown_hook(tiny_model_dir, tasks, tmp_path, capsys):
    dest = tmp_path / "out"
    argv = extract_args(tiny_model_dir, tasks, dest, "--hooks", "blocks.1.hook_resid_side")
    _fails_cleanly(capsys, argv, dest, "blocks.1.hook_resid_side")


def test_layer_out_of_range(tiny_model_dir, tasks, tmp_path, capsys):
    dest = tmp_path / "out"
    _fails_cleanly(capsys, extract_args(tiny_model_dir, tasks, dest, "--hooks", "blocks.4.hook_resid_post"), dest,
                   "layer 4", "0..3")
    _fails_cleanly(capsys, extract_args(tiny_model_dir, tasks, dest, "--layers", "1", "7", "--activation", "mlp"), dest,
                   "layer 7")


def test_no_hooks_named(tiny_model_dir, tasks, tmp_path, capsys):
    dest = tmp_path / "out"
    _fails_cleanly(capsys, extract_args(tiny_model_dir, tasks, dest), dest, "--hooks")


def test_missing_model(tasks, tmp_path, capsys):
    dest = tmp_path / "out"
    _fails_cleanly(capsys, extract_args(tmp_path / "no-such-model", tasks, dest, *GOOD), dest, "no-such-model")


def test_unreadable_weights(tiny_model_dir, tasks, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 100)  # truncated: not a safetensors file
    dest = tmp_path / "out"
    _fails_cleanly(capsys, extract_args(broken, tasks, dest, *GOOD), dest, "safetensors")


def test_unwritable_destination(tiny_model_dir, tasks, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    dest = blocker / "store"
    _fails_cleanly(capsys, extract_args(tiny_model_dir, tasks, dest, *GOOD), dest, str(blocker))
    assert blocker.read_text() == "not a directory"


def test_empty_task_set(tiny_model_dir, tmp_path, capsys):
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    dest = tmp_path / "out"
    _fails_cleanly(capsys, extract_args(tiny_model_dir, empty, dest, *GOOD), dest, str(empty))


def test_existing_store_with_other_settings(tiny_model_dir, tasks, tmp_path, capsys):
    dest = tmp_path / "store"
    assert main(extract_args(tiny_model_dir, tasks, dest, *GOOD)) == 0
    capsys.readouterr()
    snapshot = {p.relative_to(dest): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    argv = extract_args(tiny_model_dir, tasks, dest, *GOOD, "--positions", "last")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "positions" in err[0], err
    assert {p.relative_to(dest): p.read_bytes() for p in dest.rglob("*") if p.is_file()} == snapshot
    meta = json.loads((dest / "metadata.json").read_text())
    assert meta["positions"] == "all"


@pytest.mark.parametrize("env, words", [
    ({"ARCLENS_RENDER_WORKERS": "2"}, ["ARCLENS_RENDER_WORKERS is no longer read", "--render-workers"]),
    ({"ARCLENS_TASKS_PER_UNIT": "4"}, ["--tasks-per-unit"]),
    ({"ARCLENS_NUM_WORKERS": "2"}, ["--num-workers"]),  # it used to switch worker mode on, silently
    ({"ARCLENS_PROCESS_ID": "one"}, ["ARCLENS_PROCESS_ID='one'", "integer"]),
    ({"ARCLENS_STORAGE_OPTIONS": "{not json"}, ["ARCLENS_STORAGE_OPTIONS", "JSON"]),
    ({"ARCLENS_TEST_CRASH_AT": "shard-written:x"}, ["ARCLENS_TEST_CRASH_AT", "NAME[:N][=SIG]"]),
])
def test_a_bad_deployment_variable_is_one_line_before_anything_is_written(tiny_model_dir, tasks, tmp_path, capsys,
                                                                          monkeypatch, env, words):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    dest = tmp_path / "out"
    _fails_cleanly(capsys, extract_args(tiny_model_dir, tasks, dest, *GOOD), dest, *words)


@pytest.mark.parametrize("flags, words", [
    (["--render-workers", "-1"], ["--render-workers", "-1"]),
    (["--publish-threads", "-2"], ["--publish-threads"]),
    (["--max-shapes", "0"], ["--max-shapes"]),
    (["--worker-id", "1"], ["--worker-id", "--num-workers"]),
    (["--num-workers", "2", "--worker-id", "2"], ["--worker-id 2 must be in 0..1"]),
    (["--num-workers", "2", "--claim-ttl", "0"], ["--claim-ttl"]),
])
def test_bad_run_flags(tiny_model_dir, tasks, tmp_path, capsys, flags, words):
    dest = tmp_path / "out"
    _fails_cleanly(capsys, extract_args(tiny_model_dir, tasks, dest, *GOOD, *flags), dest, *words)
