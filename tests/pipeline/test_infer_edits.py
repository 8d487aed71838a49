"""`arclens infer --splice / --ablate / --steer`: an SAE in the loop of generation, end to end.

The checkpoint is the tiny random model with an untied head that can only say '0'-'9', 'x' and a
line break (as test_infer_roles.py), so its answers are digits and line breaks that differ from
edit to edit (never a tied embedding's one repeated token). Every edited run is
checked against a teacher-forced forward pass with the same edit (and the prompts' token roles):
each generated token is that pass's argmax, with its log-probability.
"""

from __future__ import annotations

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from tests.support.cli import run_cli
from tests.support.models import grid_writing_model as write_grid_model
from tests.support.stores import stored
from tests.support.tasks import write_small_tasks

from arclens.cli import main as cli_main
from arclens.data.loaders import load_tasks
from arclens.errors import UserError
from arclens.model import edits as E
from arclens.model.edits import PromptRoles, batch_roles
from arclens.model.loading import load_model
from arclens.model.qwen import forward_jit
from arclens.pipeline.infer_edits import sae_fingerprint
from arclens.pipeline.predictions import read_predictions
from arclens.prompts import PromptConfig, load_tokenizer, render_samples
from arclens.sae import SAEConfig, load, new_sae, save
from arclens.sae.edits import ablate, splice, steer_latent

D, M = 64, 256  # the tiny model's width; latents per SAE
RESID, MLP = "blocks.1.hook_resid_post", "blocks.2.hook_mlp_out"
ENCODER = "MinimalGridEncoder()"
PPT = 2
RUN = ["--predictions-per-task", str(PPT), "--max-new-tokens", "16", "--dtype", "float32", "--encoder", ENCODER]
ABLATED = (0, 1, 2, 3)
STEER_LATENT, ALPHA, WHERE = 7, 1.0, "cells"


@pytest.fixture(scope="module")
def model(tiny_model_dir, tmp_path_factory):
    """The tiny random model with a head that writes grids (tests/support/models.py)."""
    return write_grid_model(tiny_model_dir, tmp_path_factory.mktemp("models") / "digits")


def _write_sae(folder, arch, hook, seed, *, d_in=D, model_name=None, firing=()):
    """Random unit decoder rows (encoder = their transpose). ``firing``: latents made to fire on
    every token with a decoder row 4x the tiny model's MLP output (so ablating them matters)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(M, d_in))
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    b_enc = rng.normal(size=M) * 0.01
    w_enc = w.T.copy()
    for i in firing:
        w_enc[:, i] *= 0.01
        b_enc[i] = 1.0
        w[i] *= 0.1
    cfg = SAEConfig(arch, d_in, M, d_in, k=24 if arch == "topk" else None, hook_name=hook, model_name=model_name)
    save(new_sae(cfg, w_enc, b_enc, w, rng.normal(size=d_in) * 0.005), str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def saes(tmp_path_factory):
    base = tmp_path_factory.mktemp("saes")
    return {
        "topk": _write_sae(base / "topk", "topk", RESID, 1),
        "topk_other": _write_sae(base / "topk-other", "topk", RESID, 2),
        "relu": _write_sae(base / "relu", "standard", MLP, 3, firing=ABLATED),
        "narrow": _write_sae(base / "narrow", "topk", RESID, 4, d_in=32),
        "deep": _write_sae(base / "deep", "topk", "blocks.7.hook_resid_post", 5),
        "other_model": _write_sae(base / "other-model", "topk", RESID, 6, model_name="Qwen/Qwen2.5-7B"),
    }


@pytest.fixture(scope="module")
def tasks_file(tmp_path_factory):
    return str(write_small_tasks(tmp_path_factory.mktemp("tasks") / "tasks.json", 3, seed=1))


def _infer(model, tasks, out, *extra):
    return cli_main(["infer", "--model", str(model), "--tasks", tasks, "--out", str(out), "--batch-size", "8",
                     *RUN, *map(str, extra)])


@pytest.fixture(scope="module")
def runs(model, tasks_file, saes, tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    flags = {
        "clean": (),
        "splice": ("--splice", saes["topk"], "--hooks", RESID, "blocks.3.hook_mlp_out"),
        "keep": ("--splice", saes["topk"], "--keep-error"),
        "ablate": ("--ablate", f"{saes['relu']}:{','.join(map(str, ABLATED))}"),
        "steer": ("--steer", f"{saes['topk']}:{STEER_LATENT}:{ALPHA}", "--edit-where", WHERE),
    }
    for name, extra in flags.items():
        assert _infer(model, tasks_file, base / name, *extra) == 0, name
    return {name: base / name for name in flags}


def _lines(folder):
    return read_predictions(folder / "predictions.jsonl")


@pytest.fixture(scope="module")
def reference(model, tasks_file):
    """A teacher-forced forward pass over every sample's prompt + generated tokens, with an edit
    and the token roles generate() documents (the prompt's own; generated: answer, no cells)."""
    _, config, params = load_model(str(model), jnp.float32)
    samples = {s.key: s for s in render_samples(load_tasks(tasks_file), load_tokenizer(str(model)),
                                                PromptConfig(encoder=ENCODER, predictions_per_task=PPT))}

    def run(lines, edits=None, hooks=(), with_roles=True):
        full = [np.asarray(r["prompt_token_ids"] + r["output_token_ids"], np.int32) for r in lines]
        t = max(map(len, full))
        tokens = np.zeros((len(full), t), np.int32)
        for i, f in enumerate(full):
            tokens[i, : len(f)] = f
        roles = []
        for r in lines:
            s, pad = samples[r["key"]], t - len(r["prompt_token_ids"])
            cells = [np.pad(np.asarray(getattr(s, c), np.int32), (0, pad), constant_values=-1) for c in ("grid", "row",
                                                                                                      "col")]
            if not with_roles:
                cells = [np.full(t, -1, np.int32)] * 3
            roles.append(PromptRoles(*cells, len(s.augmentation.train_order), len(r["prompt_token_ids"])))
        out = forward_jit(params, config, jnp.asarray(tokens), jnp.asarray([len(f) for f in full], jnp.int32),
                          hooks=hooks, logits=True, edits=edits, roles=batch_roles(roles, len(full), t))
        return {k: np.asarray(v) for k, v in out.items()}

    return run


def _check_against(reference_out, lines):
    """Each generated token is the teacher-forced argmax, its log-probability the same."""
    logits = reference_out["logits"]
    for i, r in enumerate(lines):
        at = slice(len(r["prompt_token_ids"]) - 1, len(r["prompt_token_ids"]) - 1 + len(r["output_token_ids"]))
        np.testing.assert_array_equal(logits[i, at].argmax(-1), r["output_token_ids"], err_msg=r["key"])
        lp = logits[i, at] - np.logaddexp.reduce(logits[i, at].astype(np.float64), axis=-1, keepdims=True)
        np.testing.assert_allclose(np.take_along_axis(lp, np.asarray(r["output_token_ids"])[:, None], -1)[:, 0],
                                   r["logprobs"], atol=1e-4, rtol=0)


def _changed(a, b) -> int:
    return sum(x["output_token_ids"] != y["output_token_ids"] for x, y in zip(a, b, strict=True))


# ---------------------------------------------------------------------------------------------


def test_splice_then_score(runs, saes, tasks_file, capsys):
    clean, spliced = _lines(runs["clean"]), _lines(runs["splice"])
    assert [r["key"] for r in spliced] == [r["key"] for r in clean] and len(clean) == 3 * PPT
    assert _changed(clean, spliced) == len(clean)  # the SAE in the loop changes every answer
    record = json.loads((runs["splice"] / "infer.json").read_text())["edits"]
    assert record == [{"kind": "splice", "hook": RESID, "sae": saes["topk"],
                       "sae_fingerprint": sae_fingerprint(load(saes["topk"])), "architecture": "topk", "d_sae": M,
                       "latents": [], "alpha": None, "keep_error": False, "where": "everywhere"}]
    assert all(r["edits"] == record for r in spliced)  # every line says which edit produced it
    assert not any("edits" in r for r in clean) and "edits" not in json.loads((runs["clean"] / "infer.json").read_text())
    capsys.readouterr()
    for name in ("clean", "splice"):
        assert cli_main(["score", "--submission", str(runs[name] / "submission.json"), "--solutions", tasks_file]) == 0
    scores = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("score: ")]
    assert len(scores) == 2 and all(" / 3 tasks = " in ln for ln in scores), scores


def test_splice_with_the_error_term_generates_what_the_clean_model_does(runs):
    clean, kept = _lines(runs["clean"]), _lines(runs["keep"])
    for a, b in zip(clean, kept, strict=True):
        assert a["output_token_ids"] == b["output_token_ids"]
        np.testing.assert_allclose(a["logprobs"], b["logprobs"], atol=1e-4, rtol=0)
    assert kept[0]["edits"][0]["keep_error"] is True
    assert (runs["keep"] / "submission.json").read_bytes() == (runs["clean"] / "submission.json").read_bytes()


def test_splice_generates_what_a_teacher_forced_pass_with_the_splice_predicts(runs, saes, reference):
    lines = _lines(runs["splice"])
    _check_against(reference(lines, {RESID: splice(load(saes["topk"]))}), lines)


def test_ablation_generates_what_a_teacher_forced_pass_with_it_predicts(runs, saes, reference):
    lines, clean = _lines(runs["ablate"]), _lines(runs["clean"])
    _check_against(reference(lines, {MLP: ablate(load(saes["relu"]), ABLATED)}), lines)
    assert _changed(lines, clean) >= len(clean) // 2
    assert lines[0]["edits"][0] | {"sae_fingerprint": None} == {
        "kind": "ablate", "hook": MLP, "sae": saes["relu"], "sae_fingerprint": None, "architecture": "standard",
        "d_sae": M, "latents": list(ABLATED), "alpha": None, "keep_error": True, "where": "everywhere"}


def test_filtered_steering_uses_the_prompts_roles(runs, saes, reference):
    """Steering only the grid cells of the prompt: without the prompts' roles no token would be a
    cell, the edit would do nothing and the model would write what the clean one does, with the
    same log-probabilities. (Its answers here keep most of their tokens: the steered cells reach
    the answer only through attention; their log-probabilities move by tenths of a nat.)"""
    lines, clean = _lines(runs["steer"]), _lines(runs["clean"])
    edit = {RESID: steer_latent(load(saes["topk"]), STEER_LATENT, ALPHA, where=E.cells())}
    _check_against(reference(lines, edit), lines)
    for a, b in zip(lines, clean, strict=True):
        n = min(len(a["logprobs"]), len(b["logprobs"]))
        assert np.abs(np.subtract(a["logprobs"][:n], b["logprobs"][:n])).max() > 0.05, a["key"]
    assert lines[0]["edits"][0]["where"] == WHERE and lines[0]["edits"][0]["alpha"] == ALPHA


def test_hooks_store_the_edited_values(runs, saes, reference):
    lines = {r["key"]: r for r in _lines(runs["splice"])}
    store = stored(runs["splice"] / "activations")
    assert sorted(store) == sorted(lines)
    import arclens

    meta = arclens.open_store(str(runs["splice"] / "activations")).metadata
    assert meta["edits"] == next(iter(lines.values()))["edits"]
    ordered = [lines[k] for k in sorted(lines)]
    hooks = (RESID, "blocks.3.hook_mlp_out")
    edited = reference(ordered, {RESID: splice(load(saes["topk"]))}, hooks=hooks)
    clean = reference(ordered, None, hooks=hooks)
    for i, r in enumerate(ordered):
        _, arrays = store[r["key"]]
        at = arrays["position"]
        for h in hooks:
            np.testing.assert_allclose(arrays[h], edited[h][i, at], rtol=1e-4, atol=1e-5)
            assert np.abs(arrays[h] - clean[h][i, at]).max() > 1e-3


def test_any_edit_from_python_goes_through_infer_and_is_recorded(model, tasks_file, reference, tmp_path, runs):
    """``infer(settings, edits={hook: Edit})``: the library's seam, for edits the flags cannot say."""
    from arclens.cli import build_parser
    from arclens.pipeline.infer import infer, validate

    args = build_parser().parse_args(["infer", "--model", str(model), "--tasks", tasks_file, "--out",
                                      str(tmp_path / "o"), "--batch-size", "8", *RUN])
    edits = {MLP: E.mean(np.full(D, 0.01, np.float32), where=E.cells("test_input") | E.answer())}
    infer(validate(args), edits=edits, progress=False)
    lines = _lines(tmp_path / "o")
    _check_against(reference(lines, edits), lines)
    assert all(r["logprobs"] != c["logprobs"] for r, c in zip(lines, _lines(runs["clean"]), strict=True))
    (record,) = json.loads((tmp_path / "o" / "infer.json").read_text())["edits"]
    assert record["kind"] == "mean" and record["hook"] == MLP and record["params_fingerprint"].startswith("sha256:")
    assert all(r["edits"] == [record] for r in lines)
    with pytest.raises(UserError, match="params_fingerprint"):  # another mean vector: refused
        infer(validate(args), edits={MLP: E.mean(np.zeros(D, np.float32), where=edits[MLP].where)}, progress=False)


# ---------------------------------------------------------------------------------------------
# Resume: the same edits resume, other edits (or none) are refused, naming the difference


def _refused(capsys, rc, *fragments):
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("arclens: error: "), err
    for f in fragments:
        assert f in err[0], err[0]


@pytest.mark.parametrize("run,extra,fragments", [
    ("clean", lambda s: ("--splice", s["topk"]), ("edits: none there, splice ", " at blocks.1.hook_resid_post now")),
    ("splice", lambda s: (), ("edits: splice ", "without its error term at blocks.1.hook_resid_post there, none now")),
    ("splice", lambda s: ("--splice", s["topk_other"]), ("edit at blocks.1.hook_resid_post: sae_fingerprint",
                                                          "(other SAE weights)")),
    ("splice", lambda s: ("--splice", s["topk"], "--keep-error"), ("keep_error False there, True now",)),
    ("ablate", lambda s: ("--ablate", f"{s['relu']}:0,1"), ("latents [0, 1, 2, 3] there, [0, 1] now",)),
    ("steer", lambda s: ("--steer", f"{s['topk']}:{STEER_LATENT}:{ALPHA}"),
     (f"where '{WHERE}' there, 'everywhere' now",)),
])
def test_a_resume_with_other_edits_is_refused(runs, model, tasks_file, saes, capsys, run, extra, fragments):
    before = {p.name: p.read_bytes() for p in runs[run].iterdir() if p.is_file()}
    hooks = ("--hooks", RESID, "blocks.3.hook_mlp_out") if run == "splice" else ()
    capsys.readouterr()
    _refused(capsys, _infer(model, tasks_file, runs[run], *extra(saes), *hooks), "holds a run with other settings",
             *fragments)
    assert {p.name: p.read_bytes() for p in runs[run].iterdir() if p.is_file()} == before


def test_the_same_sae_under_another_path_resumes(runs, model, tasks_file, saes, tmp_path, capsys):
    out, moved = tmp_path / "run", tmp_path / "moved-sae"
    shutil.copytree(runs["ablate"], out)
    shutil.copytree(saes["relu"], moved)
    capsys.readouterr()
    assert _infer(model, tasks_file, out, "--ablate", f"{moved}:3,2,1,0") == 0  # same latents, another order
    assert "tasks: 3 (3 already predicted, skipped)" in capsys.readouterr().out
    assert (out / "predictions.jsonl").read_bytes() == (runs["ablate"] / "predictions.jsonl").read_bytes()


# ---------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written


BAD = [
    (lambda s, tmp: ("--splice", str(tmp / "nowhere")), "--splice {tmp}/nowhere: no cfg.json there"),
    (lambda s, tmp: ("--ablate", s["relu"]), "--ablate {relu}: expected SAE_DIR:L1,L2,..."),
    (lambda s, tmp: ("--ablate", f"{s['relu']}:1,x"), "latent 'x' is not an integer index"),
    (lambda s, tmp: ("--ablate", f"{s['relu']}:1,256"), "--ablate {relu}: latent 256: out of range for an SAE "
                                                        + "of 256 latents (0..255)"),
    (lambda s, tmp: ("--steer", f"{s['topk']}:3"), "expected SAE_DIR:LATENT:ALPHA"),
    (lambda s, tmp: ("--steer", f"{s['topk']}:3:inf"), "alpha 'inf' is not a finite number"),
    (lambda s, tmp: ("--steer", f"{s['topk']}:-1:2"), "latent -1: out of range"),
    (lambda s, tmp: ("--splice", s["narrow"]), "--splice {narrow}: the SAE's d_in is 32, but the model's"),
    (lambda s, tmp: ("--splice", s["deep"]), "the SAE's hook 'blocks.7.hook_resid_post' is not a hook of "
                                             + "this 4-layer model"),
    (lambda s, tmp: ("--splice", s["other_model"]), "made for model 'Qwen/Qwen2.5-7B'"),
    (lambda s, tmp: ("--splice", s["topk"], "--steer", f"{s['topk_other']}:1:1"),
     "--splice {topk} and --steer {topk_other} both edit blocks.1.hook_resid_post"),
    (lambda s, tmp: ("--keep-error",), "--keep-error/--no-keep-error: no --splice or --ablate"),
    (lambda s, tmp: ("--steer", f"{s['topk']}:1:1", "--no-keep-error"), "steering adds to the activation"),
    (lambda s, tmp: ("--splice", s["topk"], "--edit-where", "cells|nowhere"), "'nowhere' is not one of"),
    (lambda s, tmp: ("--splice", s["topk"], "--edit-where", "cells:answer"), "an inference prompt shows no answer"),
    (lambda s, tmp: ("--edit-where", "answer"), "--edit-where: no --splice, --ablate or --steer"),
]


@pytest.mark.parametrize("flags,message", BAD)
def test_bad_edit_flags_are_one_line_exit_2(model, tasks_file, saes, tmp_path, capsys, flags, message):
    out = tmp_path / "out"
    rc = _infer(model, tasks_file, out, *flags(saes, tmp_path))
    _refused(capsys, rc, message.format(tmp=tmp_path, **saes))
    assert not out.exists()


def test_allow_other_model_accepts_an_sae_named_for_another_model(model, tasks_file, saes, tmp_path):
    from arclens.cli import build_parser
    from arclens.pipeline.infer import validate

    args = build_parser().parse_args(["infer", "--model", str(model), "--tasks", tasks_file, "--out",
                                      str(tmp_path / "o"), "--splice", saes["other_model"], "--allow-other-model"])
    (edit,) = validate(args).edits
    assert edit.hook == RESID and edit.record["kind"] == "splice"


# ---------------------------------------------------------------------------------------------
# Two devices: the edits' arrays live beside each replica; the files are the same as on one


def test_two_devices_with_edits_write_the_same_files_as_one(model, tasks_file, saes, tmp_path, runs, reference):
    """Two edits at two hooks (they compose), steering the generated tokens only; --batch-size 1:
    eight batches shared out over two devices with device-to-device copies disallowed."""
    clean = _lines(runs["clean"])
    runs = {}
    for n in (1, 2):
        out = tmp_path / f"d{n}"
        r = run_cli(["infer", "--model", str(model), "--tasks", tasks_file, "--out", str(out), *RUN,
                     "--batch-size", "1", "--devices", str(n), "--hooks", RESID,
                     "--ablate", f"{saes['relu']}:0,2", "--steer", f"{saes['topk']}:{STEER_LATENT}:{ALPHA}",
                     "--edit-where", "answer"],
                    timeout=300, XLA_FLAGS="--xla_force_host_platform_device_count=2")
        assert r.returncode == 0, r.stderr
        assert f"generating on {n} device(s)" in r.stderr
        runs[n] = (out, r)
    counts = [int(x) for x in runs[2][1].stdout.split("batches per device: ")[1].splitlines()[0].split(",")]
    assert len(counts) == 2 and min(counts) >= 1, runs[2][1].stdout  # both devices generated, guard on
    for name in ("submission.json", "predictions.jsonl", "infer.json"):
        assert (runs[2][0] / name).read_bytes() == (runs[1][0] / name).read_bytes(), name
    kinds = [e["kind"] for e in json.loads((runs[1][0] / "infer.json").read_text())["edits"]]
    assert kinds == ["steer", "ablate"]  # sorted by hook: blocks.1 before blocks.2
    lines = _lines(runs[2][0])
    both = {RESID: steer_latent(load(saes["topk"]), STEER_LATENT, ALPHA, where=E.answer()),
            MLP: ablate(load(saes["relu"]), (0, 2), where=E.answer())}  # --edit-where applies to both
    _check_against(reference(lines, both), lines)
    assert _changed(lines, clean) >= len(clean) // 2
    a1, a2 = stored(runs[1][0] / "activations"), stored(runs[2][0] / "activations")
    assert sorted(a1) == sorted(a2) and len(a1) == 3 * PPT
    for key, (_, arrays) in a1.items():
        for name, v in arrays.items():
            np.testing.assert_array_equal(a2[key][1][name], v)
