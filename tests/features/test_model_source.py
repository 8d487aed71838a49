"""The model source of `arclens features` (`--model MODEL --tasks SRC`): the tiny random model's
activations computed on the fly by the extract job's device batches give the same FDIR as a store
that `arclens extract` wrote from the same model, tasks and prompt options; and its bad input is one
line, exit 2, with nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tests.support.cli import extract_args, run_cli
from tests.support.planted_roles import HOOK, write_tasks
from tests.support.stores import stored

from arclens.cli import main

PROMPT = ("--predictions-per-task", "3", "--with-answer")
OPTIONS = ("--top-k", "6", "--quantiles", "4", "--quantile-examples", "3", "--context", "3", "--logits", "5")
# What may differ, and why: both sources encode the very same float32 activations (extract and the
# model source run one schedule, so every sample is computed in the same batch shape), but the
# model source's batches are [B, T] rows in schedule order and the store's are samples packed in
# stored order, so the per-latent *sums* (mass, the role tables, the shares and means made of them)
# add the same terms in another order. They agree to RTOL/ATOL (measured: relative ~1e-7). Counts,
# maxima, histograms, consistency, coverage and every example (key, position, value, cells,
# context) are equal exactly.
RTOL, ATOL = 1e-5, 1e-6
SUMMED = ("mass", "_share", "_specificity", "mean_act")  # names ending so: sums of activations


def _sae_for(store_dir, arch: str, seed: int = 0):
    """An SAE whose latents each fire on about a third of the store's tokens: random unit encoder
    directions, each biased at the 2/3 quantile of its projections (b_dec = the mean)."""
    from arclens.sae import SAEConfig, new_sae

    x = np.concatenate([arrays[HOOK] for _, arrays in stored(store_dir).values()]).astype(np.float64)
    d, f = x.shape[1], 24
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((d, f))
    w /= np.linalg.norm(w, axis=0)
    b_dec = x.mean(axis=0)
    b_enc = -np.quantile((x - b_dec) @ w, 2 / 3, axis=0)
    cfg = SAEConfig(arch, d, f, d, k=4 if arch == "topk" else None, hook_name=HOOK)
    return new_sae(cfg, w, b_enc, w.T.copy(), b_dec)


@pytest.fixture(scope="module")
def both(tmp_path_factory, tiny_model_dir):
    """(root, {arch: (store FDIR, model FDIR)}) over the same tiny model, tasks and prompts."""
    from arclens.sae import save

    root = tmp_path_factory.mktemp("model-source")
    tasks = write_tasks(root / "tasks.json", 3, seed=5, two_tests=True)
    store = root / "store"
    assert main(extract_args(tiny_model_dir, tasks, store, "--hooks", HOOK, "--dtype", "float32",
                             "--positions", "all", *PROMPT)) == 0
    out = {}
    for arch in ("standard", "topk"):
        save(_sae_for(store, arch), str(root / f"sae-{arch}"))
        a, b = root / f"from-store-{arch}", root / f"from-model-{arch}"
        assert main(["features", "--sae", str(root / f"sae-{arch}"), "--store", str(store), "--out", str(a),
                     *OPTIONS]) == 0
        assert main(["features", "--sae", str(root / f"sae-{arch}"), "--model", str(tiny_model_dir), "--tasks",
                     str(tasks), "--dtype", "float32", "--out", str(b), *PROMPT, *OPTIONS]) == 0
        out[arch] = (a, b)
    return root, out


def _close(a, b, where: str) -> None:
    """Equal JSON, floats within RTOL/ATOL, everything else exactly."""
    if isinstance(a, float) or isinstance(b, float):
        assert a is not None and b is not None, where
        assert np.isclose(a, b, rtol=RTOL, atol=ATOL), f"{where}: {a} != {b}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            _close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.parametrize("arch", ["standard", "topk"])
def test_the_model_source_equals_the_store_source(both, arch):
    from safetensors.numpy import load_file

    a, b = both[1][arch]
    doc_a, doc_b = (json.loads((d / "features.json").read_text()) for d in (a, b))
    assert doc_a["source"]["kind"] == "store" and doc_b["source"]["kind"] == "model"
    assert doc_a["n_tokens"] == doc_b["n_tokens"] > 1000
    fires = np.array([r["frequency"] for r in doc_b["latents"]])
    assert (fires > 0.01).all() and (fires < 0.9).all()  # every latent has something to rank
    # what differs: where the activations came from, when, and the batch size each source used
    for key in ("source", "created_at", "settings"):
        doc_a.pop(key), doc_b.pop(key)
    _close(doc_a, doc_b, "features.json")  # per-latent statistics, role tables, coverage, base rates
    lat_a, lat_b = load_file(str(a / "latents.safetensors")), load_file(str(b / "latents.safetensors"))
    assert lat_a.keys() == lat_b.keys()
    for name in lat_a:
        if name.endswith(SUMMED):
            np.testing.assert_allclose(lat_b[name], lat_a[name], rtol=RTOL, atol=ATOL, err_msg=name)
        else:  # n_fires, frequency, max_act, hist_counts, consistency, coverage, logits
            np.testing.assert_array_equal(lat_b[name], lat_a[name], err_msg=name)
    for name in ("examples.jsonl", "samples.jsonl"):  # top-K and quantile examples, their samples
        lines_a, lines_b = ((d / name).read_text().splitlines() for d in (a, b))
        assert len(lines_a) == len(lines_b) > 0, name
        for i, (x, y) in enumerate(zip(lines_a, lines_b)):
            assert x == y, f"{name}:{i + 1}"


@pytest.mark.parametrize("tallies, workers", [("auto", 1), ("device", 1), ("auto", 2)])
def test_two_devices_equal_one(both, tiny_model_dir, tmp_path, tallies, workers):
    """The captures sharded over a 2-device mesh, the SAE replicated on it: the same FDIR, with
    the per-pair counts made on the host (auto, on this CPU) or on the devices, as an accelerator
    host with several chips makes them, and with the host's fold in 2 worker processes."""
    root, runs = both
    out = tmp_path / "fdir"
    r = run_cli(["features", "--sae", root / "sae-topk", "--model", tiny_model_dir, "--tasks", root / "tasks.json",
                 "--dtype", "float32", "--out", out, "--tallies", tallies, "--fold-workers", str(workers),
                 *PROMPT, *OPTIONS],
                XLA_FLAGS="--xla_force_host_platform_device_count=2")
    assert r.returncode == 0, r.stderr[-3000:]
    one = runs["topk"][1]
    assert (out / "examples.jsonl").read_text() == (one / "examples.jsonl").read_text()
    doc, ref = (json.loads((d / "features.json").read_text()) for d in (out, one))
    _close(doc["latents"], ref["latents"], "latents")


def test_the_model_source_records_its_model_prompt_and_tasks(both, tiny_model_dir):
    import arclens
    from arclens.model.fingerprint import model_fingerprint

    root, runs = both
    src = json.loads((runs["topk"][1] / "features.json").read_text())["source"]
    meta = arclens.open_store(str(root / "store")).metadata
    assert src["prompt"] == meta["prompt"]  # the same prompt config extract records
    assert src["tasks_metadata"]["fingerprint"] == meta["tasks"]["fingerprint"]
    assert src["tasks_metadata"]["count"] == 3
    assert src["model_metadata"]["fingerprint"] == model_fingerprint(tiny_model_dir)
    assert src["model_metadata"]["dtype"] == "float32" and src["random_weights"] is True
    assert src["hook"] == HOOK and src["positions"] == "all" and src["n_samples"] == len(stored(root / "store"))


def _refused(capsys, tmp_path, *args, match: str) -> str:
    out = tmp_path / "fdir"
    rc = main(["features", *map(str, args), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and match in err, err
    assert not out.exists() and not list(tmp_path.glob("fdir.tmp-*"))
    return err


def test_model_without_tasks(capsys, tmp_path, both, tiny_model_dir):
    sae = both[0] / "sae-topk"
    _refused(capsys, tmp_path, "--sae", sae, "--model", tiny_model_dir, match="--model MODEL --tasks SRC")


def test_hook_the_model_lacks(capsys, tmp_path, both, tiny_model_dir):
    import dataclasses

    from arclens.sae import load, save

    sae = load(str(both[0] / "sae-topk"))
    save(sae.replace(cfg=dataclasses.replace(sae.cfg, hook_name="blocks.7.hook_resid_post")), str(tmp_path / "sae"))
    err = _refused(capsys, tmp_path, "--sae", tmp_path / "sae", "--model", tiny_model_dir, "--tasks",
                   both[0] / "tasks.json", match="blocks.7.hook_resid_post")
    assert "is not a hook of this 4-layer model" in err


def test_d_in_other_than_the_models_width(capsys, tmp_path, both, tiny_model_dir):
    from arclens.sae import SAEConfig, new_sae, save

    cfg = SAEConfig("standard", 32, 8, 32, hook_name=HOOK)
    save(new_sae(cfg, np.zeros((32, 8)), np.zeros(8), np.zeros((8, 32)), np.zeros(32)), str(tmp_path / "sae"))
    _refused(capsys, tmp_path, "--sae", tmp_path / "sae", "--model", tiny_model_dir, "--tasks",
             both[0] / "tasks.json", match="d_in is 32, but the model's activations")


def test_sae_of_another_model(capsys, tmp_path, both, tiny_model_dir):
    import dataclasses

    from arclens.sae import load, save

    sae = load(str(both[0] / "sae-topk"))
    save(sae.replace(cfg=dataclasses.replace(sae.cfg, model_name="Qwen/Qwen2.5-0.5B-Instruct")),
         str(tmp_path / "sae"))
    _refused(capsys, tmp_path, "--sae", tmp_path / "sae", "--model", tiny_model_dir, "--tasks",
             both[0] / "tasks.json", match="--allow-other-model")


def test_a_stopped_job_is_never_a_complete_pass(both, tiny_model_dir):
    """A stop request (SIGTERM, Ctrl-C) ends the job between batches; the source then raises
    instead of ending quietly, so `features` writes no FDIR from part of the samples."""
    from arclens.data.loaders import load_tasks
    from arclens.features.model_source import ModelSource
    from arclens.features.sources import TaskGrids
    from arclens.pipeline.job import ExtractJob
    from arclens.pipeline.settings import CaptureSettings
    from arclens.prompts import PromptConfig

    tasks = load_tasks(str(both[0] / "tasks.json"))
    capture = CaptureSettings.load(tiny_model_dir, [HOOK], prompt=PromptConfig(predictions_per_task=3, with_answer=True),
                                   dtype="float32", tokens_per_batch=1024)
    source = ModelSource(ExtractJob(capture), tasks, HOOK, TaskGrids(tasks, "tasks"))
    try:
        batches = source.batches()
        first = next(batches)
        assert 0 < len(first.samples) < source.n_samples
        source.job.stop.request("SIGTERM")
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            list(batches)
    finally:
        source.close()


@pytest.mark.parametrize("flag", [("--seed", "3"), ("--predictions-per-task", "2"), ("--no-augment",), ("--dtype", "float32"),
                                  ("--max-tasks", "1"), ("--allow-other-model",)],
                         ids=lambda f: f[0])
def test_the_model_sources_flags_with_a_store(capsys, tmp_path, both, flag):
    """With --store they would be ignored (the store's prompts and dtype are what they are)."""
    root = both[0]
    err = _refused(capsys, tmp_path, "--sae", root / "sae-topk", "--store", root / "store", *flag,
                   match=f"{flag[0]} is for the model source")
    assert "--store" in err
