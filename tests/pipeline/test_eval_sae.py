"""`arclens eval-sae`: the command end to end (table, JSON with SPEC section 6's keys), bad input
(one line, exit 2, nothing written), the reply start, and one program per batch."""

from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tests.support.cli import run_cli
from tests.support.tasks import make_task, write_small_tasks

from arclens import cli
from arclens.model.loading import load_model
from arclens.pipeline import eval_sae_metrics
from arclens.sae import SAEConfig, new_sae, save

D, M = 64, 128


def _save_sae(folder, hook="blocks.1.hook_resid_post", d_in=D, model_name=None, arch="topk", hook_out=None):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(M, d_in))
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    cfg = SAEConfig(arch, d_in, M, d_in, k=8 if arch == "topk" else None, hook_name=hook, hook_name_out=hook_out,
                    model_name=model_name, apply_b_dec_to_input=hook_out is None)
    save(new_sae(cfg, w.T, np.zeros(M), w, np.zeros(d_in)), str(folder))
    return folder


def test_eval_sae_end_to_end_prints_the_table_and_writes_specs_keys(tiny_model_dir, tmp_path):
    sae = _save_sae(tmp_path / "sae", model_name=str(tiny_model_dir))
    tasks = write_small_tasks(tmp_path / "tasks.json", 2)
    out = tmp_path / "res" / "eval.json"
    r = run_cli(["eval-sae", "--sae", sae, "--model", tiny_model_dir, "--tasks", tasks, "--out", out,
                 "--predictions-per-task", "2", "--dtype", "float32"])
    assert r.returncode == 0, r.stderr
    for row in ("CE clean", "CE spliced", "CE zero", "CE mean", "loss recovered", "KL(clean || spliced)", "FVU",
                "L0", "dead fraction", "all tokens", "answer tokens"):
        assert row in r.stdout, row
    res = json.loads(out.read_text())
    spec = {"n_tokens", "ce", "loss_recovered", "kl", "fvu", "l0", "dead_frac", "sae", "model", "tasks", "prompt"}
    assert spec <= set(res)
    assert set(res["n_tokens"]) == set(res["ce"]) == set(res["loss_recovered"]) == set(res["kl"]) == {"all", "answer"}
    for k in ("all", "answer"):
        assert set(res["ce"][k]) == {"clean", "spliced", "zero", "mean"}
        assert all(np.isfinite(v) and v > 0 for v in res["ce"][k].values())
    assert 0 < res["n_tokens"]["answer"] < res["n_tokens"]["all"]
    assert res["l0"] == pytest.approx(8.0)  # topk with k = 8 on every token
    assert 0 <= res["dead_frac"] <= 1 and res["fvu"] > 0
    assert res["prompt"]["with_answer"] is True and res["tasks"]["samples"] == 4
    assert res["sae"] == str(sae) and res["model"]["fingerprint"].startswith("sampled-sha256")
    # the table shows the file's numbers
    assert f"{res['ce']['all']['spliced']:.4f}" in r.stdout


def _bad(argv, capsys):
    rc = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    return rc, err


@pytest.fixture
def base_args(tiny_model_dir, tmp_path):
    tasks = write_small_tasks(tmp_path / "tasks.json", 1)
    return ["eval-sae", "--model", tiny_model_dir, "--tasks", tasks, "--no-augment"]


@pytest.mark.parametrize("case", ["no_outputs", "d_in", "hook", "model", "transcoder_order", "out_is_dir"])
def test_bad_input_is_one_line_and_exit_2_with_nothing_written(case, base_args, tmp_path, capsys):
    sae = tmp_path / "sae"
    out = tmp_path / "out" / "eval.json"
    args = list(base_args)
    if case == "no_outputs":
        _save_sae(sae)
        tasks = {"a": make_task(1), "b": make_task(2, with_outputs=False)}
        (tmp_path / "t.json").write_text(json.dumps(tasks))
        args[args.index("--tasks") + 1] = tmp_path / "t.json"
        want = "1 of 2 tasks have no test outputs.*first: b"
    elif case == "d_in":
        _save_sae(sae, d_in=32)
        want = "d_in is 32.*64 dimensions"
    elif case == "hook":
        _save_sae(sae, hook="blocks.7.hook_resid_post")
        want = "blocks.7.hook_resid_post.*not a hook of this 4-layer model"
    elif case == "model":
        _save_sae(sae, model_name="Qwen/Qwen2.5-0.5B")
        want = "made for model 'Qwen/Qwen2.5-0.5B'.*--allow-other-model"
    elif case == "transcoder_order":
        _save_sae(sae, arch="standard", hook="blocks.2.hook_mlp_out", hook_out="blocks.1.hook_mlp_out")
        want = "input hook must come before its output hook"
    else:
        _save_sae(sae)
        out = tmp_path / "adir"
        out.mkdir()
        want = "is a folder"
    rc, err = _bad([*args, "--sae", sae, "--out", out], capsys)
    assert rc == 2 and len(err.splitlines()) == 1 and re.search(want, err), err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_allow_other_model_skips_only_the_name_check(base_args, tmp_path, tiny_model_dir):
    from arclens.pipeline.eval_sae import validate

    _save_sae(tmp_path / "sae", model_name="Qwen/Qwen2.5-0.5B")
    args = cli.build_parser().parse_args([str(a) for a in base_args] + ["--sae", str(tmp_path / "sae"), "--out",
                                                                          str(tmp_path / "e.json"),
                                                                          "--allow-other-model"])
    s = validate(args)
    assert s.sae.cfg.model_name == "Qwen/Qwen2.5-0.5B" and s.prompt.with_answer
    # the name check accepts the checkpoint's folder name or hub id under other spellings
    _save_sae(tmp_path / "sae2", model_name=f"someorg/{tiny_model_dir.name}")
    args.sae, args.allow_other_model = str(tmp_path / "sae2"), False
    validate(args)


def test_the_answer_starts_at_the_reply_of_the_last_assistant_turn(tokenizer):
    from tests.support.arc_tasks import arc_task

    from arclens.prompts import PromptConfig, render_samples

    samples = list(render_samples([arc_task("007bbfb7")], tokenizer, PromptConfig(predictions_per_task=2,
                                                                                  with_answer=True)))
    for s, p in zip(samples, eval_sae_metrics.eval_prompts(samples, tokenizer), strict=True):
        reply = tokenizer.decode(s.token_ids[p.answer_start:])
        assert reply.startswith("### Output") and "<|im_start|>" not in reply
        assert tokenizer.decode(s.token_ids[: p.answer_start]).endswith("<|im_start|>assistant\n")
        # every answer-grid cell is in the reply
        answer_grid = 2 * len(s.augmentation.train_order) + 1
        assert (np.flatnonzero(s.grid == answer_grid) >= p.answer_start).all()


def test_one_program_per_batch_computes_the_shared_layers_once(tiny_model_dir, tmp_path):
    """Four forward passes in one jitted function: the layers before the SAE's hook are the same
    computation in all four, and XLA computes them once (count the compiled program's dots)."""
    from arclens.model.qwen import forward
    from arclens.sae import load

    _, config, params = load_model(str(tiny_model_dir), jnp.float32)
    b, t = 2, 256
    args = (jnp.zeros((b, t), jnp.int32), jnp.full((b,), t, jnp.int32))

    def dots(fn, *a, **kw):
        return jax.jit(fn, static_argnames=tuple(kw)).lower(*a, **kw).compile().as_text().count(" dot(")

    one = dots(lambda p, tok, ln: forward(p, config, tok, ln, logits=True)["logits"], params, *args)
    per_layer = (one - 1) // config.n_layers
    for layer in (0, 3):
        sae = load(str(_save_sae(tmp_path / f"sae{layer}", hook=f"blocks.{layer}.hook_resid_post")))
        n = dots(eval_sae_metrics._batch_sums, params, sae, jnp.zeros(D), *args, jnp.full((b,), 10, jnp.int32),
                 config=config)
        later = config.n_layers - 1 - layer  # layers after the hook, run once per edited variant
        # one clean pass + three edited continuations + the head (in the chunk loop) + encode/decode
        assert n <= per_layer * (config.n_layers + 3 * later) + 1 + 3, (layer, n, per_layer)
        # a residual hook's zero and mean come from one token after the pass: the spliced one only
        n = dots(eval_sae_metrics._batch_sums, params, sae, None, *args, jnp.full((b,), 10, jnp.int32), config=config)
        assert n <= per_layer * (config.n_layers + later) + 1 + 3, (layer, n, per_layer)


def test_an_arclens_exports_model_fingerprint_decides_over_its_name(base_args, tmp_path, tiny_model_dir):
    """arclens.json's recorded model fingerprint is compared by content (any spelling of --model
    passes, other weights fail); a fingerprint of another scheme falls back to the name."""
    from arclens.model.fingerprint import model_fingerprint
    from arclens.pipeline.eval_sae import validate

    sae = _save_sae(tmp_path / "sae", model_name="a-name-that-matches-nothing")
    args = cli.build_parser().parse_args([str(a) for a in base_args] + ["--sae", str(sae), "--out",
                                                                          str(tmp_path / "e.json")])
    mine = model_fingerprint(tiny_model_dir)
    (sae / "arclens.json").write_text(json.dumps({"source": {"model": {"fingerprint": mine}}}))
    validate(args)
    other = mine[:-6] + "000000"
    (sae / "arclens.json").write_text(json.dumps({"source": {"model": {"fingerprint": other}}}))
    with pytest.raises(cli.UserError, match="another model fingerprint"):
        validate(args)
    (sae / "arclens.json").write_text(json.dumps({"model_fingerprint": "sampled-sha256-v1:" + "0" * 64}))
    with pytest.raises(cli.UserError, match="made for model 'a-name-that-matches-nothing'"):
        validate(args)


def test_a_residual_hooks_zero_and_mean_from_one_token_equal_the_full_passes(tiny_model_dir, tokenizer, tmp_path,
                                                                              monkeypatch):
    """At resid_pre/resid_mid/resid_post, zero or mean ablation makes the residual stream one vector,
    so evaluate computes those two CEs from one token's logits and the target counts; they equal
    the four-variant program's full forward passes (resid_post is also checked against
    transformers in test_eval_sae_reference.py)."""
    from arclens.data.loaders import load_tasks
    from arclens.prompts import PromptConfig, render_samples
    from arclens.sae import load

    _, config, params = load_model(str(tiny_model_dir), jnp.float32)
    tasks = load_tasks(str(write_small_tasks(tmp_path / "tasks.json", 3)), None, None)
    samples = list(render_samples(tasks, tokenizer, PromptConfig(augment=False, with_answer=True)))
    prompts = eval_sae_metrics.eval_prompts(samples, tokenizer)
    for hook in ("blocks.0.hook_resid_pre", "blocks.1.hook_resid_mid"):
        sae = load(str(_save_sae(tmp_path / hook, hook=hook)))
        fast = eval_sae_metrics.evaluate(sae, params, config, prompts, tokens_per_batch=4096, max_shapes=1)
        with monkeypatch.context() as m:
            m.setattr(eval_sae_metrics, "CONSTANT_STREAM_KINDS", ())
            full = eval_sae_metrics.evaluate(sae, params, config, prompts, tokens_per_batch=4096, max_shapes=1)
        assert fast["mean_ablation"] != full["mean_ablation"]
        for k in ("all", "answer"):
            ce, ref = fast["ce"][k], full["ce"][k]
            for v in eval_sae_metrics.VARIANTS:  # measured: within 3e-7
                assert ce[v] == pytest.approx(ref[v], rel=1e-6), (hook, k, v)
            for v in ("zero", "mean"):  # the ablations move the CE by far more than the tolerance
                assert abs(ref[v] - ref["clean"]) > 1e-4 * ref["clean"], (hook, k, v)
        for key in ("n_tokens", "kl", "fvu", "l0", "dead_frac"):
            assert fast[key] == pytest.approx(full[key], rel=1e-6), key
