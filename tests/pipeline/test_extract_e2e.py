"""`arclens extract` end to end on CPU with the tiny random checkpoint.

One extraction (module fixture) is checked from every side: values against transformers, token
roles against the prompts package, metadata, verify, a no-op rerun; then `--positions last` and
the same job into S3 (moto) and GCS (fake-gcs-server) stores.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from tests.support.cli import extract_args
from tests.support.reference import hf_reference, rel_err
from tests.support.stores import stored
from tests.support.tasks import write_tasks

from arclens.cli import main

HOOKS = [
    "blocks.0.hook_resid_pre",
    "blocks.0.hook_attn_out",
    "blocks.1.hook_resid_mid",
    "blocks.2.hook_mlp_out",
    "blocks.3.hook_resid_post",
]
# Small batches and shards, so one run has several batches (with padding rows) and several shards.
OPTIONS = ["--hooks", *HOOKS, "--dtype", "float32", "--predictions-per-task", "2",
           "--tokens-per-batch", "1024", "--shard-mb", "0.4"]


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("extract")
    tasks = write_tasks(root / "tasks.json", n_tasks=4)
    dest = root / "store"
    assert main(extract_args(tiny_model_dir, tasks, dest, *OPTIONS)) == 0
    return {"root": root, "tasks": tasks, "dest": dest, "stored": stored(dest)}


@pytest.fixture(scope="module")
def rendered(job, tokenizer):
    from arclens.data.loaders import load_tasks
    from arclens.prompts import PromptConfig, render_samples

    cfg = PromptConfig(predictions_per_task=2)
    return {s.key: s for s in render_samples(load_tasks(str(job["tasks"])), tokenizer, cfg)}


def test_every_sample_stored_once_with_its_roles(job, rendered):
    got = job["stored"]
    assert set(got) == set(rendered)  # 4 tasks, 6 test inputs, 2 augmentations: 12 samples
    assert len(got) == 12
    for key, (sample, arrays) in got.items():
        ref = rendered[key]
        n = len(ref.token_ids)
        assert sample["prompt_tokens"] == sample["stored_tokens"] == n
        assert sample["task_id"] == ref.task_id and sample["test_index"] == ref.test_index
        assert sample["augmentation"] == ref.augmentation.to_json()
        np.testing.assert_array_equal(arrays["token_id"], ref.token_ids)
        np.testing.assert_array_equal(arrays["position"], np.arange(n))
        for role in ("grid", "row", "col"):
            np.testing.assert_array_equal(arrays[role], getattr(ref, role), err_msg=f"{key} {role}")
        assert (arrays["grid"] >= 0).sum() > 0  # the prompt's grid cells are marked


def test_every_stored_activation_matches_transformers(job, tiny_model_dir):
    worst = 0.0
    for key, (sample, arrays) in job["stored"].items():
        ref = hf_reference(tiny_model_dir, arrays["token_id"], HOOKS)
        for hook in HOOKS:
            assert arrays[hook].shape == (sample["prompt_tokens"], 64)
            err = rel_err(arrays[hook], ref[hook])
            worst = max(worst, err)
            assert err <= 1e-4, (key, hook, err)
    assert worst > 0  # the comparison compared something computed two ways


def test_metadata_follows_the_spec(job, tiny_model_dir):
    meta = json.loads((job["dest"] / "metadata.json").read_text())
    assert meta["format"] == "arclens-activations" and meta["version"] == 1
    assert meta["hooks"] == HOOKS and meta["dtype"] == "float32" and meta["d_model"] == 64
    assert meta["positions"] == "all"
    assert meta["model"]["name"] == str(tiny_model_dir)
    assert meta["model"]["config"]["num_hidden_layers"] == 4 and meta["model"]["dtype"] == "float32"
    assert meta["model"]["random_weights"] is True  # `arclens random-model` output stays labelled
    assert meta["prompt"]["predictions_per_task"] == 2 and meta["prompt"]["version"] == "output-from-examples-v1"
    assert meta["tasks"]["source"] == str(job["tasks"]) and meta["tasks"]["count"] == 4
    # extensions of the SPEC's fields that the resume check compares by (docs/STORE.md)
    assert meta["tasks"]["fingerprint"].startswith("tasks-sha256-v1:")
    assert meta["model"]["fingerprint"].startswith("sampled-sha256-v2:")
    assert meta["created_at"] and meta["arclens_version"]


def test_several_shards_and_verify_passes(job, capsys):
    assert len(list((job["dest"] / "index").iterdir())) >= 3
    assert main(["verify", str(job["dest"])]) == 0
    capsys.readouterr()
    assert main(["inspect", str(job["dest"])]) == 0
    assert "RANDOM WEIGHTS" in capsys.readouterr().out


def test_rerun_adds_nothing(job, tiny_model_dir, capsys):
    before = sorted(p.name for p in (job["dest"] / "index").iterdir())
    assert main(extract_args(tiny_model_dir, job["tasks"], job["dest"], *OPTIONS)) == 0
    assert "nothing to do" in capsys.readouterr().err
    assert sorted(p.name for p in (job["dest"] / "index").iterdir()) == before


def test_positions_last_stores_exactly_the_last_prompt_token(job, tiny_model_dir):
    dest = job["root"] / "last"
    assert main(extract_args(tiny_model_dir, job["tasks"], dest, *OPTIONS, "--positions", "last")) == 0
    got = stored(dest)
    assert set(got) == set(job["stored"])
    for key, (sample, arrays) in got.items():
        _, full = job["stored"][key]
        n = sample["prompt_tokens"]
        assert sample["stored_tokens"] == 1
        np.testing.assert_array_equal(arrays["position"], [n - 1])
        np.testing.assert_array_equal(arrays["token_id"], full["token_id"][-1:])
        for role in ("grid", "row", "col"):
            np.testing.assert_array_equal(arrays[role], full[role][-1:])
        for hook in HOOKS:
            assert rel_err(arrays[hook], full[hook][-1:]) <= 1e-5, (key, hook)


@pytest.mark.parametrize("remote_fixture", ["s3_remote", "gcs_remote"])
def test_same_job_into_an_object_store(job, tiny_model_dir, remote_fixture, request, monkeypatch):
    remote = request.getfixturevalue(remote_fixture)
    for k, v in remote.env.items():
        monkeypatch.setenv(k, v)
    dest = remote.child("store")
    assert main(extract_args(tiny_model_dir, job["tasks"], dest, *OPTIONS)) == 0
    got = stored(dest, remote.storage_options)
    assert set(got) == set(job["stored"])
    for key, (sample, arrays) in got.items():
        _, local = job["stored"][key]
        assert sample["stored_tokens"] == local["token_id"].shape[0]
        for name, arr in local.items():
            np.testing.assert_array_equal(arrays[name], arr, err_msg=f"{key} {name}")
    assert main(["verify", dest]) == 0


def test_rendering_in_a_process_pool_gives_the_same_store(job, tiny_model_dir):
    dest = job["root"] / "pool"  # spawned rendering workers, as on a many-core host
    assert main(extract_args(tiny_model_dir, job["tasks"], dest, *OPTIONS, "--render-workers", "2")) == 0
    got = stored(dest)
    assert set(got) == set(job["stored"])
    for key, (sample, arrays) in got.items():
        want_sample, want = job["stored"][key]
        assert sample == want_sample
        for name, arr in want.items():
            np.testing.assert_array_equal(arrays[name], arr, err_msg=f"{key} {name}")


def test_captures_placed_in_pinned_host_memory_give_the_same_store(job, tiny_model_dir):
    # --capture-memory pinned_host: XLA writes the captures into host memory itself. A throughput
    # option for accelerators; on CPU it must at least change no stored byte.
    dest = job["root"] / "pinned"
    assert main(extract_args(tiny_model_dir, job["tasks"], dest, *OPTIONS, "--capture-memory", "pinned_host")) == 0
    got = stored(dest)
    assert set(got) == set(job["stored"])
    for key, (_, arrays) in got.items():
        _, want = job["stored"][key]
        for name, arr in want.items():
            np.testing.assert_array_equal(arrays[name], arr, err_msg=f"{key} {name}")


def test_an_unknown_capture_memory_is_a_user_error(job, tiny_model_dir, capsys):
    assert main(extract_args(tiny_model_dir, job["tasks"], job["root"] / "never", *OPTIONS,
                             "--capture-memory", "hbm")) == 2
    assert "--capture-memory" in capsys.readouterr().err
    assert not (job["root"] / "never").exists()  # refused before anything was written


def test_several_windows_give_the_same_store(job, tiny_model_dir):
    # Windows of ~5 samples: every window is planned on its own (its own ladder and batches).
    import dataclasses

    from arclens.cli import build_parser
    from arclens.deployment import read_deployment
    from arclens.pipeline.extract import validate
    from arclens.pipeline.job import ExtractJob

    dest = job["root"] / "windows"
    args = build_parser().parse_args(extract_args(tiny_model_dir, job["tasks"], dest, *OPTIONS))
    settings, tasks = validate(args, read_deployment())
    settings = dataclasses.replace(settings, capture=dataclasses.replace(settings.capture, window_samples=5))
    with ExtractJob(settings) as extract_job:
        summary = extract_job.run(tasks, progress=False)
    assert summary.samples == len(job["stored"]) and summary.complete
    got = stored(dest)
    assert set(got) == set(job["stored"])
    for key, (_, arrays) in got.items():
        _, want = job["stored"][key]
        for name, arr in want.items():
            if name.startswith("blocks."):
                assert rel_err(arrays[name], arr) <= 1e-5, (key, name)
            else:
                np.testing.assert_array_equal(arrays[name], arr, err_msg=f"{key} {name}")


def test_default_bfloat16_store_is_close_to_float32(job, tiny_model_dir):
    dest = job["root"] / "bf16"
    options = [o for o in OPTIONS if o not in ("--dtype", "float32")]  # the default dtype: bfloat16
    assert main(extract_args(tiny_model_dir, job["tasks"], dest, *options)) == 0
    meta = json.loads((dest / "metadata.json").read_text())
    assert meta["dtype"] == "bfloat16" and meta["model"]["dtype"] == "bfloat16"
    for key, (_, arrays) in stored(dest).items():
        _, want = job["stored"][key]
        for hook in HOOKS:
            assert str(arrays[hook].dtype) == "bfloat16"
            assert rel_err(arrays[hook].astype(np.float32), want[hook]) <= 5e-2, (key, hook)
