"""Bad input to `arclens features`: one line on stderr, exit status 2, nothing written."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from tests.support.cli import run_cli
from tests.support.features_brute import quantised_sae

from arclens.cli import main


def _sae(tmp_path, name="sae", **changes):
    from arclens.sae import SAEConfig, new_sae, save

    sae = quantised_sae("standard")
    if "d_in" in changes:
        d = changes.pop("d_in")
        cfg = SAEConfig("standard", d, sae.cfg.d_sae, d, hook_name=sae.cfg.hook_name)
        sae = new_sae(cfg, np.zeros((d, cfg.d_sae)), np.zeros(cfg.d_sae), np.zeros((cfg.d_sae, d)), np.zeros(d))
    if changes:
        sae = sae.replace(cfg=dataclasses.replace(sae.cfg, **changes))
    save(sae, str(tmp_path / name))
    return tmp_path / name


def _run(capsys, *args) -> tuple[int, str]:
    rc = main(["features", *map(str, args)])
    err = capsys.readouterr().err.strip()
    return rc, err


def _refused(capsys, tmp_path, *args, match: str):
    out = tmp_path / "fdir"
    rc, err = _run(capsys, *args, "--out", out)
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and match in err, err
    assert not out.exists() and not list(tmp_path.glob("fdir.tmp-*"))
    return err


def test_hook_not_in_store(capsys, tmp_path, exact_store):
    sae = _sae(tmp_path, hook_name="blocks.0.hook_mlp_out")
    err = _refused(capsys, tmp_path, "--sae", sae, "--store", exact_store.dest, match="blocks.0.hook_mlp_out")
    assert "is not in the store" in err and "blocks.1.hook_resid_post" in err


def test_d_in_mismatch(capsys, tmp_path, exact_store):
    sae = _sae(tmp_path, d_in=32)
    _refused(capsys, tmp_path, "--sae", sae, "--store", exact_store.dest, match="d_in 32 does not match")


def test_other_tasks_than_the_stores(capsys, tmp_path, exact_store):
    from tests.support.planted_roles import write_tasks

    other = write_tasks(tmp_path / "other.json", 4, seed=99, two_tests=True)
    _refused(capsys, tmp_path, "--sae", _sae(tmp_path), "--store", exact_store.dest, "--tasks", other,
             match="not the tasks this store was made from")


def test_not_a_store(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    _refused(capsys, tmp_path, "--sae", _sae(tmp_path), "--store", tmp_path / "empty", match="not an activation store")


def test_not_an_sae(capsys, tmp_path, exact_store):
    _refused(capsys, tmp_path, "--sae", tmp_path, "--store", exact_store.dest, match="cfg.json")


@pytest.mark.parametrize("flag, value", [("--top-k", 0), ("--quantiles", 0), ("--batch-tokens", 0), ("--context", -1),
                                         ("--fold-workers", 0)])
def test_bad_numbers(capsys, tmp_path, exact_store, flag, value):
    _refused(capsys, tmp_path, "--sae", _sae(tmp_path), "--store", exact_store.dest, flag, value, match=flag)


def test_device_tallies_with_too_many_quantiles(capsys, tmp_path, exact_store):
    _refused(capsys, tmp_path, "--sae", _sae(tmp_path), "--store", exact_store.dest, "--tallies", "device",
             "--quantiles", 1 << 18, match="--tallies device: --quantiles must be below 262144")


def test_no_source(capsys, tmp_path):
    _refused(capsys, tmp_path, "--sae", _sae(tmp_path), match="give --store DEST, or --model MODEL --tasks SRC")


def test_an_out_folder_that_is_not_an_fdir_is_left_alone(capsys, tmp_path, exact_store):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    rc, err = _run(capsys, "--sae", _sae(tmp_path), "--store", exact_store.dest, "--out", out)
    assert rc == 2 and len(err.splitlines()) == 1 and "did not write" in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"


def test_the_command_line_writes_an_fdir_and_replaces_its_own(capsys, tmp_path, exact_store):
    """The real console path (a fresh process): exit 0, the four files; run again over the same
    FDIR, it is replaced whole; an unknown --model is one line, exit 2, the FDIR left as it was."""
    sae = _sae(tmp_path)
    out = tmp_path / "fdir"
    args = ["features", "--sae", sae, "--store", exact_store.dest, "--out", out, "--top-k", 3, "--batch-tokens", 2048]
    r = run_cli(args)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["examples.jsonl", "features.json", "latents.safetensors",
                                                      "samples.jsonl"]
    first = json.loads((out / "features.json").read_text())["created_at"]
    (out / "features.json").write_text((out / "features.json").read_text().replace(first, "then"))
    r = run_cli(args)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "features.json").read_text())["created_at"] != "then"
    assert not list(tmp_path.glob("fdir.*"))
    before = (out / "features.json").read_bytes()
    rc, err = _run(capsys, *args[1:], "--model", tmp_path / "no-such-model")
    assert rc == 2 and len(err.splitlines()) == 1 and "no-such-model" in err
    assert (out / "features.json").read_bytes() == before


def test_a_last_position_store(tmp_path, tiny_model_dir):
    """An extract --positions last store (one token per prompt, no cells): everything still comes
    out, with the shares that need cells null and one-token contexts."""
    from tests.support import planted_roles as pr

    from arclens.features.run import FeaturesSettings, run

    tasks_path = pr.write_tasks(tmp_path / "tasks.json", 2, seed=5)
    tasks, _, config, samples = pr.render(tasks_path, tiny_model_dir, predictions_per_task=4)
    rng = np.random.default_rng(0)
    pr.write_store(tmp_path / "store", samples, lambda s: rng.standard_normal((len(s.token_ids), 64)),
                   pr.store_metadata(tiny_model_dir, tasks_path, tasks, config, 64), last_only=True)
    run(FeaturesSettings(sae=str(_sae(tmp_path)), out=tmp_path / "fdir", store=str(tmp_path / "store"),
                         progress=False))
    doc = json.loads((tmp_path / "fdir" / "features.json").read_text())
    assert doc["n_tokens"] == len(samples) and doc["source"]["positions"] == "last"
    assert all(r["grid_kind_share"] is None for r in doc["latents"]) and doc["coverage"]["mean"] is None
    lines = [json.loads(x) for x in (tmp_path / "fdir" / "examples.jsonl").read_text().splitlines()]
    assert lines and all(len(e["context"]["positions"]) == 1 and e["cells"] == [] for e in lines)
