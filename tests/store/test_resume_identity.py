"""The resume check's model and task identity (store/metadata.py FINGERPRINTED_SECTIONS): by
fingerprint where both stores have one, by the spelling (name, source) where either lacks it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.support.synth_store import store_metadata

from arclens.errors import UserError
from arclens.store.metadata import metadata_differences
from arclens.store.writer import open_or_create_store

FP_A = "sampled-sha256-v2:" + "a" * 64
FP_B = "sampled-sha256-v2:" + "b" * 64
TASKS_A = "tasks-sha256-v1:" + "1" * 64
TASKS_B = "tasks-sha256-v1:" + "2" * 64


def meta(name="/models/m", fp=FP_A, source="/data/x.json", tasks_fp=TASKS_A, **extra):
    m = store_metadata(**extra)
    m["model"] = {**m["model"], "name": name}
    m["tasks"] = {**m["tasks"], "source": source}
    if fp is not None:
        m["model"]["fingerprint"] = fp
    if tasks_fp is not None:
        m["tasks"]["fingerprint"] = tasks_fp
    return m


def test_same_fingerprints_make_the_spelling_irrelevant():
    assert metadata_differences(meta(), meta(name="../models/m", source="x.json")) == []


def test_other_fingerprints_differ_even_under_the_same_name():
    assert metadata_differences(meta(), meta(fp=FP_B)) == ["model.fingerprint"]
    assert metadata_differences(meta(), meta(tasks_fp=TASKS_B)) == ["tasks.fingerprint"]
    assert metadata_differences(meta(), meta(name="m2", fp=FP_B)) == ["model.fingerprint"]


def test_without_a_fingerprint_on_either_side_the_spelling_decides():
    old = meta(fp=None, tasks_fp=None)  # a store made before fingerprints
    assert metadata_differences(old, meta()) == []
    assert metadata_differences(old, meta(name="../models/m")) == ["model.name"]
    assert metadata_differences(old, meta(source="x.json")) == ["tasks.source"]
    assert metadata_differences(meta(), old) == []
    # Fingerprints of another scheme (v1 sampled the weights only) are not comparable: the name
    # decides again.
    other_scheme = meta(fp="sampled-sha256-v1:" + "a" * 64)
    assert metadata_differences(meta(), other_scheme) == []
    assert metadata_differences(meta(), meta(name="elsewhere", fp="sampled-sha256-v1:" + "a" * 64)) == ["model.name"]


def test_other_fields_of_a_fingerprinted_section_still_count():
    assert metadata_differences(meta(), meta(name="x", tasks_fp=TASKS_A) | {"dtype": "float32"}) == ["dtype"]
    m = meta(name="x")
    m["tasks"]["count"] = 4
    assert metadata_differences(meta(), m) == ["tasks.count"]


def _files(dest: Path) -> dict:
    return {p.relative_to(dest): p.read_bytes() for p in dest.rglob("*") if p.is_file()}


def test_open_keeps_the_original_metadata_and_refuses_other_weights(tmp_path):
    dest = tmp_path / "s"
    open_or_create_store(str(dest), meta())
    snapshot = _files(dest)
    handle = open_or_create_store(str(dest), meta(name="./m", source="x.json"))
    assert handle.metadata["model"]["name"] == "/models/m" and handle.metadata["tasks"]["source"] == "/data/x.json"
    assert _files(dest) == snapshot  # metadata.json is create-only: never rewritten

    with pytest.raises(UserError) as err:
        open_or_create_store(str(dest), meta(fp=FP_B))
    msg = str(err.value)
    assert "\n" not in msg
    assert "the model at /models/m (its weights or tokenizer) changed since this store was created" in msg
    assert "sampled-sha256-v2:aaaaaaaaaaaa" in msg and "sampled-sha256-v2:bbbbbbbbbbbb" in msg

    with pytest.raises(UserError) as err:
        open_or_create_store(str(dest), meta(name="/other/m", fp=FP_B, positions="last"))
    msg = str(err.value)
    assert "created with the model /models/m" in msg and "/other/m holds other weights or another tokenizer" in msg
    assert "Other settings differ too: positions" in msg

    with pytest.raises(UserError, match=r"tasks\.fingerprint: store has \"tasks-sha256-v1:111111111111\""):
        open_or_create_store(str(dest), meta(tasks_fp=TASKS_B))
    assert _files(dest) == snapshot
    assert json.loads((dest / "metadata.json").read_text())["model"]["fingerprint"] == FP_A
