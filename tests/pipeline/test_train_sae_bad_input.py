"""Bad input to `arclens train-sae`: exit 2, one line on stderr naming the problem, nothing written."""

from __future__ import annotations

import pytest
from tests.support.planted import _planted_small, _planted_transcoder  # noqa: F401 - fixtures

from arclens.cli import main
from arclens.errors import UserError

HOOK = "blocks.0.hook_resid_post"


def _fails_cleanly(capsys, argv, out, *words):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for w in words:
        assert w in err[0], err[0]
    assert not out.exists() or not any(out.iterdir()), "something was written"
    return err[0]


def _args(store, out, *extra):
    return ["train-sae", "--store", store, "--out", str(out), "--tokens", "2048", "--batch-tokens", "512", *extra]


@pytest.mark.parametrize("extra, words", [
    (["--hooks", "blocks.3.hook_mlp_out"], ["no hook blocks.3.hook_mlp_out", HOOK]),
    (["--hook-in", HOOK, "--hook-out", "blocks.0.hook_mlp_out"], ["no hook blocks.0.hook_mlp_out"]),
    (["--hooks", "blocks.0.resid"], ["not a hook name"]),
    (["--hooks", HOOK, "--d-sae", "64", "--k", "64"], ["--k 64", "64 latents"]),
    (["--hooks", HOOK, "--d-sae", "64", "--k", "8", "100"], ["--k 100"]),
    (["--hooks", HOOK, "--d-sae", "0"], ["--d-sae 0", "at least 1 latent"]),
    (["--hooks", HOOK, "--expansion", "0.01"], ["--expansion", "at least 1"]),
    (["--hooks", HOOK, "--expansion", "-2"], ["--expansion -2"]),
    (["--hooks", HOOK, "--d-sae", "64", "--expansion", "2"], ["--d-sae or --expansion"]),
    (["--hooks", HOOK, "--hook-in", HOOK, "--hook-out", HOOK], ["either --hooks"]),
    (["--hook-in", HOOK], ["both --hook-in and --hook-out"]),
    (["--hook-in", HOOK, "--hook-out", HOOK], ["same hook"]),
    (["--hooks", HOOK, HOOK], ["named twice"]),
    ([], ["--hooks H"]),
    (["--hooks", HOOK, "--arch", "topk", "--l0-coef", "0.1"], ["--l0-coef is for --arch jumprelu"]),
    (["--hooks", HOOK, "--arch", "relu", "--k", "4"], ["--k is for topk"]),
    (["--hooks", HOOK, "--tokens", "100"], ["--tokens 100", "less than one batch"]),
    (["--hooks", HOOK, "--lr", "0"], ["--lr 0"]),
    (["--hooks", HOOK, "--checkpoint-every", "0"], ["--checkpoint-every 0"]),
    (["--hooks", HOOK, "--decay-fraction", "1.5"], ["--decay-fraction 1.5"]),
    (["--hooks", HOOK, "--arch", "sparse"], ["invalid choice"]),
], ids=lambda v: "-".join(v) if isinstance(v, list) and v and v[0].startswith("-") else None)
def test_bad_flags(planted_small, tmp_path, capsys, extra, words):
    out = tmp_path / "out"
    _fails_cleanly(capsys, _args(planted_small[0], out, *extra), out, *words)


def test_missing_store(tmp_path, capsys):
    out = tmp_path / "out"
    _fails_cleanly(capsys, _args(str(tmp_path / "nowhere"), out, "--hooks", HOOK), out, "nowhere")


def test_unwritable_out(planted_small, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    _fails_cleanly(capsys, _args(planted_small[0], blocker / "out", "--hooks", HOOK), blocker / "out",
                   "--out", "not a writable folder")
    _fails_cleanly(capsys, _args(planted_small[0], blocker, "--hooks", HOOK), tmp_path / "none", "--out",
                   "not a folder")


def test_transcoder_of_two_widths_is_refused_for_topk():
    # Every hook of an arclens store is d_model wide, so the command cannot meet this; the rule
    # lives where the widths are known.
    from types import SimpleNamespace

    from arclens.pipeline.train_sae import sae_specs, sweep_from_args

    args = SimpleNamespace(hooks=None, hook_in="blocks.0.hook_resid_mid", hook_out="blocks.0.hook_mlp_out",
                           d_sae=[64], expansion=None, arch="topk", k=[4], l0_coef=None, l1_coef=None)
    widths = {"blocks.0.hook_resid_mid": 32, "blocks.0.hook_mlp_out": 48}
    with pytest.raises(UserError, match="equal widths"):
        sae_specs(sweep_from_args(args), widths.__getitem__)
    args.arch, args.k = "relu", None
    specs = sae_specs(sweep_from_args(args), widths.__getitem__)
    assert (specs[0].d_in, specs[0].d_out) == (32, 48)


def test_existing_output_of_another_run_is_refused(planted_small, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_args(planted_small[0], out, "--hooks", HOOK, "--d-sae", "32", "--k", "4", "--quiet")) == 0
    capsys.readouterr()
    before = sorted(p.name for p in (out / HOOK).iterdir())
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / HOOK).iterdir()}
    assert main(_args(planted_small[0], out, "--hooks", HOOK, "--d-sae", "32", "--k", "5", "--quiet")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other settings" in err[0] and "saes[0].k: 4 -> 5" in err[0]
    assert sorted(p.name for p in (out / HOOK).iterdir()) == before
    assert {p.name: p.stat().st_mtime_ns for p in (out / HOOK).iterdir()} == mtimes
