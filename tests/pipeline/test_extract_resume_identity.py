"""Resuming `arclens extract` into a store depends on which weights and tasks it holds, not on how
`--model` and `--tasks` are spelled (store/metadata.py FINGERPRINTED_SECTIONS, docs/STORE.md).

One full extraction is the reference. Each test copies it, drops the later index files (what a
crash before those commits leaves: shards without their commit) and resumes the copy another way.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
from tests.support.cli import extract_args
from tests.support.reference import rel_err
from tests.support.stores import stored
from tests.support.tasks import write_tasks

from arclens.cli import main
from arclens.model.random_checkpoint import write_random_model

HOOKS = ["blocks.1.hook_resid_post"]
OPTIONS = ["--hooks", *HOOKS, "--dtype", "float32", "--predictions-per-task", "1",
           "--tokens-per-batch", "1024", "--shard-mb", "0.1"]


@pytest.fixture(scope="module")
def ref(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("identity")
    model = root / "models" / "m"
    shutil.copytree(tiny_model_dir, model)  # a copy of our own: tests replace weights in copies
    tasks = write_tasks(root / "tasks.json", n_tasks=3, seed=2)
    dest = root / "reference"
    assert main(extract_args(model, tasks, dest, *OPTIONS)) == 0
    n_index = len(list((dest / "index").iterdir()))
    assert n_index >= 3, n_index
    return {"root": root, "model": model, "tasks": tasks, "dest": dest, "stored": stored(dest)}


def _partial_copy(ref, name: str):
    """A copy of the reference store with its later half of commits undone; (dest, kept keys)."""
    from arclens.store.writer import committed_keys

    dest = ref["root"] / name
    shutil.copytree(ref["dest"], dest)
    index = sorted((dest / "index").iterdir())
    for p in index[len(index) // 2:]:
        p.unlink()
    kept = committed_keys(str(dest))
    assert 0 < len(kept) < len(ref["stored"])
    return dest, kept


def _files(dest) -> dict:
    return {p.relative_to(dest): p.read_bytes() for p in dest.rglob("*") if p.is_file()}


def _assert_complete(ref, dest, capsys, kept):
    out = capsys.readouterr().out
    assert f"skipped {len(kept)} already committed" in out, out
    got = stored(dest)  # raises on a key stored twice
    assert set(got) == set(ref["stored"])
    for key, (_, arrays) in got.items():
        _, want = ref["stored"][key]
        for hook in HOOKS:
            assert rel_err(arrays[hook], want[hook]) <= 1e-5, (key, hook)
    assert main(["verify", str(dest)]) == 0


def _refused(capsys, argv, dest, *words) -> str:
    before = _files(dest)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for w in words:
        assert w in err[0], err[0]
    assert _files(dest) == before, "something was written"
    return err[0]


def test_relative_and_absolute_spellings_resume(ref, capsys, monkeypatch):
    dest, kept = _partial_copy(ref, "spelling")
    meta_before = (dest / "metadata.json").read_bytes()
    monkeypatch.chdir(ref["model"].parent)
    # --model m (relative) and --tasks ../tasks.json for a store made with absolute paths
    argv = extract_args("m", os.path.relpath(ref["tasks"]), os.path.relpath(dest), *OPTIONS)
    assert argv[2] != str(ref["model"]) and argv[4] != str(ref["tasks"])
    assert main(argv) == 0
    _assert_complete(ref, dest, capsys, kept)
    assert (dest / "metadata.json").read_bytes() == meta_before  # still the original names
    meta = json.loads(meta_before)
    assert meta["model"]["name"] == str(ref["model"]) and meta["model"]["fingerprint"].startswith("sampled-sha256-v2:")
    assert meta["tasks"]["source"] == str(ref["tasks"]) and meta["tasks"]["fingerprint"].startswith("tasks-sha256-v1:")


def test_a_copied_checkpoint_and_task_file_resume(ref, capsys):
    dest, kept = _partial_copy(ref, "copied")
    elsewhere = ref["root"] / "elsewhere" / "copy-of-m"
    shutil.copytree(ref["model"], elsewhere)
    tasks = ref["root"] / "elsewhere" / "same-tasks.json"
    shutil.copy(ref["tasks"], tasks)
    assert main(extract_args(elsewhere, tasks, dest, *OPTIONS)) == 0
    _assert_complete(ref, dest, capsys, kept)


def test_weights_replaced_at_the_same_path_are_refused(ref, capsys):
    model = ref["root"] / "models" / "replaced"
    shutil.copytree(ref["model"], model)
    dest = ref["root"] / "replaced-store"
    assert main(extract_args(model, ref["tasks"], dest, *OPTIONS)) == 0
    capsys.readouterr()
    for p in sorted((dest / "index").iterdir())[1:]:
        p.unlink()
    # `arclens random-model DIR --seed 1` over the seed-0 checkpoint: same config, other weights.
    shutil.rmtree(model)
    write_random_model(model, preset="tiny", seed=1)
    assert json.loads((model / "config.json").read_text()) == json.loads((ref["model"] / "config.json").read_text())
    _refused(capsys, extract_args(model, ref["tasks"], dest, *OPTIONS), dest,
             f"the model at {model} (its weights or tokenizer) changed since this store was created", "sampled-sha256-v2:")
    # ... and other weights under another name name both
    other = ref["root"] / "models" / "other"
    write_random_model(other, preset="tiny", seed=2)
    _refused(capsys, extract_args(other, ref["tasks"], dest, *OPTIONS), dest,
             f"created with the model {model}", f"{other} holds other weights or another tokenizer")


def test_a_tokenizer_edited_at_the_same_path_is_refused(ref, capsys):
    # Same weights, another chat template: resuming would mix two tokenizations in one store.
    dest, _ = _partial_copy(ref, "edited-tokenizer")
    path = ref["model"] / "tokenizer_config.json"
    original = path.read_text()
    tok_config = json.loads(original)
    tok_config["chat_template"] = tok_config["chat_template"].replace("<|im_start|>", "<|im_start|> ")
    assert tok_config != json.loads(original)
    try:
        path.write_text(json.dumps(tok_config, indent=2))
        _refused(capsys, extract_args(ref["model"], ref["tasks"], dest, *OPTIONS), dest,
                 f"at {ref['model']} (its weights or tokenizer) changed since this store was created")
    finally:
        path.write_text(original)


def test_edited_tasks_are_refused(ref, capsys):
    dest, _ = _partial_copy(ref, "edited-tasks")
    tasks = json.loads(ref["tasks"].read_text())
    first = min(tasks)
    grid = tasks[first]["train"][0]["input"]
    grid[0][0] = (grid[0][0] + 1) % 10  # same ids, same count, one cell changed
    edited = ref["root"] / "edited.json"
    edited.write_text(json.dumps(tasks))
    _refused(capsys, extract_args(ref["model"], edited, dest, *OPTIONS), dest, "tasks.fingerprint")


def test_a_store_without_fingerprints_resumes_by_name(ref, capsys, monkeypatch):
    # A store made by an arclens before fingerprints: same names resume, other spellings do not.
    dest, kept = _partial_copy(ref, "old")
    meta = json.loads((dest / "metadata.json").read_text())
    del meta["model"]["fingerprint"]
    del meta["tasks"]["fingerprint"]
    (dest / "metadata.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    monkeypatch.chdir(ref["model"].parent)
    _refused(capsys, extract_args("m", ref["tasks"], dest, *OPTIONS), dest, "model.name")
    assert main(extract_args(ref["model"], ref["tasks"], dest, *OPTIONS)) == 0
    _assert_complete(ref, dest, capsys, kept)
    assert "fingerprint" not in json.loads((dest / "metadata.json").read_text())["model"]
