"""`arclens train-sae --model MODEL --tasks SRC`: training on the fly (docs/SAE.md "On the fly").

- With ``--no-shuffle`` the on-the-fly stream is the token stream of ``arclens extract
  --positions all`` in its stored order (checked batch by batch), so the SAE equals the one
  trained from that store (the bar is 1e-5; in float32 they are in fact identical).
- With shuffling both finish with close FVUs (the two sources shuffle differently).
- At ``--mesh 1,2`` (model-parallel forward and latents, 2 devices): the one-device SAE to 1e-5.
- kill -9 / SIGTERM mid-training, then the same command: the weights of an uninterrupted run; a
  rerun with another prompt option is refused, naming the field.
- Bad input: one line, exit 2, ``--out`` not created.

Sizes: 8 tiny tasks x 2 augmentations = 16 prompts, 5423 tokens; forward batches of 1024 tokens
(8 per pass), shuffle windows of 2 forward batches, training batches of 256 tokens.
"""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest
from safetensors.numpy import load_file
from tests.support.cli import free_port, run_cli, start_cli, wait_ok
from tests.support.tasks import write_small_tasks

from arclens.cli import build_parser, main

HOOK = "blocks.1.hook_resid_post"
PROMPT = ["--predictions-per-task", "2"]
FLY = ["--model-dtype", "float32", "--tokens-per-batch", "1024", "--shuffle-window", "2", *PROMPT]
SAE = ["--hooks", HOOK, "--d-sae", "64", "--k", "4", "--batch-tokens", "256", "--quiet"]


@pytest.fixture(scope="module")
def data(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("fly")
    tasks = write_small_tasks(root / "tasks.json", 8)
    store = root / "store"
    assert main(["extract", "--model", str(tiny_model_dir), "--tasks", str(tasks), "--out", str(store), "--hooks",
                 HOOK, "--positions", "all", "--dtype", "float32", "--tokens-per-batch", "1024",
                 "--shard-mb", "0.05", *PROMPT]) == 0
    return {"model": str(tiny_model_dir), "tasks": str(tasks), "store": str(store), "root": root}


def _fly(data, out, *extra):
    return ["train-sae", "--model", data["model"], "--tasks", data["tasks"], "--out", str(out), *FLY, *SAE, *extra]


def _store(data, out, *extra):
    return ["train-sae", "--store", data["store"], "--out", str(out), *SAE, *extra]


def _weights(out) -> dict[str, np.ndarray]:
    return load_file(f"{out}/{HOOK}/sae_weights.safetensors")


def _doc(out) -> dict:
    return json.loads((out / HOOK / "arclens.json").read_text())


def test_the_unshuffled_stream_is_the_stored_order(data):
    """The forward order (schedule order, each batch's rows and their real tokens in order) is the
    order extract writes the store in, so the two unshuffled sources cut the same batches."""
    import arclens
    from arclens.distributed.runtime import Runtime
    from arclens.pipeline.train_sae import settings_from_args
    from arclens.pipeline.train_sae_fly import open_source
    from arclens.sae.store_source import StoreSource

    args = build_parser().parse_args(_fly(data, data["root"] / "unused", "--no-shuffle"))
    settings, fly = open_source(args, Runtime(), lambda n, w, fp: settings_from_args(args, n, w, fp))
    store = arclens.open_store(data["store"])
    try:
        assert fly.n_tokens == store.n_tokens == 5423  # one pass, counted from the rendered prompts
        assert settings.tokens == 5423 // 256 * 256
        stored = StoreSource(store, [HOOK], batch_tokens=256, seed=0, shuffle=False).host_batches()
        streamed = fly.device_batches(None, None)
        for _ in range(5423 // 256 + 3):  # into the second pass: the carry crosses the epoch
            a, b = next(stored).arrays[HOOK], np.asarray(next(streamed)[0][HOOK])
            np.testing.assert_array_equal(a, b)
    finally:
        fly.close()
        fly.job.close()


def test_on_the_fly_equals_from_the_store(data, tmp_path, capsys):
    # --no-shuffle: the same token stream (above), the same seed: the same SAE.
    assert main(_store(data, tmp_path / "store", "--no-shuffle", "--seed", "5")) == 0
    assert main(_fly(data, tmp_path / "fly", "--no-shuffle", "--seed", "5")) == 0
    a, b = _weights(tmp_path / "store"), _weights(tmp_path / "fly")
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=0, atol=1e-5, err_msg=name)
    doc = _doc(tmp_path / "fly")
    src = doc["source"]
    assert src["kind"] == "model" and src["model"]["name"] == data["model"] and src["tasks"]["source"] == data["tasks"]
    assert src["model_fingerprint"].startswith("sampled-sha256") and src["tasks"]["fingerprint"].startswith("tasks-")
    assert src["prompt"]["predictions_per_task"] == 2 and src["capture_dtype"] == "float32" and src["n_tokens"] == 5423
    assert doc["tokens"] == 5423 // 256 * 256
    # Shuffled: the two sources mix differently (store: shards and windows of 4 shards; on the fly:
    # forward batches, windows of 2), so only the FVUs compare. Over seeds 0-2 of each source the
    # final FVU ranged 0.159-0.178 here; 0.05 is about 3x that spread.
    extra = ("--tokens", "10240", "--seed", "1")
    assert main(_store(data, tmp_path / "store-shuffled", *extra)) == 0
    assert main(_fly(data, tmp_path / "fly-shuffled", *extra)) == 0
    fvu = [_doc(tmp_path / name)["final"]["fvu"] for name in ("store-shuffled", "fly-shuffled")]
    first = json.loads((tmp_path / "fly-shuffled" / HOOK / "metrics.jsonl").read_text().splitlines()[0])["fvu"]
    assert abs(fvu[0] - fvu[1]) < 0.05, fvu
    assert max(fvu) < 0.5 * first, (fvu, first)  # both trained
    capsys.readouterr()


@pytest.mark.parametrize("order", [("--no-shuffle", "--seed", "5"), ("--tokens", "10240", "--seed", "1")],
                         ids=["unshuffled", "shuffled"])
def test_model_parallel_on_the_fly_trains_the_one_device_sae(data, tmp_path, order, capsys):
    """At ``--mesh 1,2`` (the forward and the latents split over 2 devices, in a subprocess) the
    stream is the one-device stream up to float32 rounding (rows within ~3e-7 relative), so the
    SAE is the same to 1e-5 (measured: < 1e-6 after 40 steps). A token lost, doubled or moved, a
    wrong shard of the captures or a padding row trained on moves the weights by ~lr = 1e-2 (0.4
    measured). In bfloat16 the two forwards round differently (~0.3% of a capture) and training
    amplifies it to ~0.1 in the weights (Adam's first step is lr x sign(grad)): docs/SAE.md section 7."""
    assert main(_fly(data, tmp_path / "one", *order)) == 0
    r = run_cli(_fly(data, tmp_path / "two", *order, "--mesh", "1,2"),
                XLA_FLAGS="--xla_force_host_platform_device_count=2")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    one, two = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert sorted(one) == sorted(two)
    for name in one:
        np.testing.assert_allclose(two[name], one[name], rtol=0, atol=1e-5, err_msg=name)
    capsys.readouterr()


def test_resume_on_the_fly_ends_with_an_uninterrupted_runs_weights(data, tmp_path, capsys):
    """24 steps of 256 tokens cross the end of the first pass (21 batches); checkpoints every 4.
    The model runs in its default bf16 (float32 SAE parameters), so the checkpointed carry is bf16."""
    extra = ("--tokens", str(24 * 256), "--checkpoint-every", "4", "--model-dtype", "bfloat16")
    ref = tmp_path / "ref"
    assert main(_fly(data, ref, *extra)) == 0
    out = tmp_path / "out"
    r = run_cli(_fly(data, out, *extra), ARCLENS_TEST_CRASH_AT="sae-step:6=TERM")
    assert r.returncode == 0 and "stopped by SIGTERM after step 6/24" in r.stdout, r.stdout + r.stderr
    # Resumed at step 6 (window 1 of pass 0), killed at step 22 (pass 1), after the step-20 checkpoint.
    r = run_cli(_fly(data, out, *extra), ARCLENS_TEST_CRASH_AT="sae-step:16")
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["step"] == 20
    # Another prompt seed is another token stream: refused, naming the field; the checkpoint stays.
    assert main(_fly(data, out, *extra, "--prompt-seed", "1")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refusing to resume" in err[0] and "source.prompt.seed: 0 -> 1" in err[0], err
    r = run_cli(_fly(data, out, *extra))
    assert r.returncode == 0, r.stderr
    got, want = _weights(out), _weights(ref)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-6, err_msg=name)


def test_data_parallel_on_the_fly_over_two_processes_and_resumed(data, tmp_path):
    """At ``--mesh 2,1`` each device packs its own rows of the forward batches and holds its share
    of the shuffle window (the deal of sae/shuffle.py; tests/sae/test_shuffle_mesh.py).

    - One process of 2 devices and two processes of one device each (jax.distributed on
      localhost, checkpoints every 4 steps, so every process takes part in writing the carry)
      train the same SAE, up to float summation order.
    - SIGTERM after step 18 (pass 0's second window, each device carrying rows of its own), then
      the same command: the uninterrupted run's weights (the bar is 1e-6).
    - It trains: the FVU ends well below the first step's."""
    from arclens.sae import checkpoint as ckpt
    from arclens.store import fs as fsx

    two = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    extra = ("--tokens", str(24 * 256), "--checkpoint-every", "4", "--mesh", "2,1")
    coordinator = f"127.0.0.1:{free_port()}"
    logs = [tmp_path / f"p{i}.log" for i in range(2)] + [tmp_path / "ref.log"]
    procs = [start_cli([*_fly(data, tmp_path / "mp", *extra), "--coordinator", coordinator, "--num-processes", "2",
                        "--process-id", str(i), "--keep-checkpoints"], logs[i], JAX_NUM_CPU_DEVICES=1)
             for i in range(2)]
    procs.append(start_cli([*_fly(data, tmp_path / "ref", *extra), "--keep-checkpoints"], logs[2], **two))
    wait_ok(procs, logs)
    assert all(f"jax.distributed: process {i} of 2" in logs[i].read_text() for i in range(2))
    want = _weights(tmp_path / "ref")
    for name, value in _weights(tmp_path / "mp").items():
        np.testing.assert_allclose(value, want[name], rtol=1e-4, atol=1e-4 * float(np.abs(want[name]).max()),
                                   err_msg=name)
    # The last checkpoints hold the same position and carry, each device's rows in turn.
    (mp_header, mp_arrays), (ref_header, ref_arrays) = (ckpt.load_latest(*fsx.get_fs(str(tmp_path / name)))
                                                        for name in ("mp", "ref"))
    assert mp_header["position"] == ref_header["position"] and "carry_counts" in ref_header["position"]
    np.testing.assert_allclose(mp_arrays[f"data/carry/{HOOK}"], ref_arrays[f"data/carry/{HOOK}"], rtol=1e-5, atol=1e-5)

    out = tmp_path / "out"
    r = run_cli(_fly(data, out, *extra), ARCLENS_TEST_CRASH_AT="sae-step:18=TERM", **two)
    assert r.returncode == 0 and "stopped by SIGTERM after step 18/24" in r.stdout, r.stdout + r.stderr
    header, arrays = ckpt.load_latest(*fsx.get_fs(str(out)))
    counts = header["position"]["carry_counts"]
    assert len(counts) == 2 and min(counts) > 0 and arrays[f"data/carry/{HOOK}"].shape[0] == sum(counts)
    r = run_cli(_fly(data, out, *extra), **two)
    assert r.returncode == 0, r.stderr[-3000:]
    got = _weights(out)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-6, err_msg=name)
    doc = _doc(out)
    assert doc["source"]["shuffle_dealt"] is True
    first = json.loads((out / HOOK / "metrics.jsonl").read_text().splitlines()[0])["fvu"]
    assert doc["final"]["fvu"] < 0.5 * first, (doc["final"]["fvu"], first)


@pytest.mark.parametrize("argv, words", [
    (lambda d, o: ["train-sae", "--store", d["store"], "--model", d["model"], "--tasks", d["tasks"], "--out", o,
                   "--hooks", HOOK], ["--store DEST or --model MODEL", "not both"]),
    (lambda d, o: ["train-sae", "--model", d["model"], "--out", o, "--hooks", HOOK], ["--tasks SRC"]),
    (lambda d, o: ["train-sae", "--out", o, "--hooks", HOOK], ["--store DEST, or --model MODEL --tasks SRC"]),
    (lambda d, o: ["train-sae", "--store", d["store"], "--tasks", d["tasks"], "--out", o, "--hooks", HOOK],
     ["--tasks is for training on the fly"]),
    (lambda d, o: ["train-sae", "--store", d["store"], "--prompt-seed", "3", "--out", o, "--hooks", HOOK],
     ["--prompt-seed is for training on the fly"]),
    (lambda d, o: ["train-sae", "--model", d["model"], "--tasks", d["tasks"], "--out", o,
                   "--hooks", "blocks.99.hook_resid_post"], ["no hook blocks.99.hook_resid_post", "blocks.0..3"]),
    (lambda d, o: ["train-sae", "--model", d["model"], "--tasks", d["tasks"], "--out", o,
                   "--hook-in", HOOK, "--hook-out", "blocks.9.hook_mlp_out"], ["no hook blocks.9.hook_mlp_out"]),
    (lambda d, o: ["train-sae", "--model", d["model"], "--tasks", d["tasks"], "--out", o, "--hooks", HOOK,
                   "--shuffle-window", "0"], ["--shuffle-window 0"]),
    (lambda d, o: ["train-sae", "--model", d["model"], "--tasks", d["tasks"], "--out", o, "--hooks", HOOK,
                   "--d-sae", "64", "--k", "64"], ["--k 64"]),
], ids=["store-and-model", "model-without-tasks", "no-source", "tasks-with-store", "prompt-seed-with-store", "hook-the-model-lacks",
        "transcoder-hook-the-model-lacks", "shuffle-window", "k-too-large"])
def test_bad_input_is_one_line_exit_2_nothing_written(data, tmp_path, capsys, argv, words):
    out = tmp_path / "out"
    assert main(argv(data, str(out))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for w in words:
        assert w in err[0], err[0]
    assert not out.exists()
