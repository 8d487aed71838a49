"""`arclens toy-model`: a tiny Qwen2 trained from scratch on arc24 training prompts.

Show point (issue 15): its loss on held-out ARC-AGI-1 *evaluation* prompts falls well below a
random tiny model's, and it loads in transformers with the same logits as arclens. The loss here
is computed by transformers (float32, eager), not by the trainer's own code, over the answer
tokens (after the last assistant header) of the first 8 unaugmented evaluation prompts of at most
768 tokens.

The test's training budget is small (30 steps of 4096 padded tokens on prompts of at most 768
tokens, 4 augmentations a task; ~60 s here with the machine shared): measured with seed 0 it takes
that held-out answer loss from 6.817 nats (the random tiny model, which predicts about uniformly
over 1024 ids: ln 1024 = 6.93) to 2.695; the test asks for less than half of the random model's
loss. The default run (docs/TOY_MODEL.md) goes much further (1.442 against 6.729 on 63 prompts).
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from tests.support.cli import run_cli, start_cli

from arclens.pipeline.toy_training import (
    ASSISTANT_HEADER,
    Example,
    answer_start,
    batch_plan,
    bucket_length,
    collate,
)

TRAIN = ["--tasks", "arc-agi-1/training", "--steps", "30", "--max-prompt-tokens", "768", "--warmup", "5",
         "--predictions-per-task", "4", "--eval-prompts", "8"]


@pytest.fixture(scope="session")
def toy_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy") / "toy"
    r = run_cli(["toy-model", str(out), *TRAIN], timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def _eval_prompts(tokenizer, n=8, max_tokens=1024):
    """(token ids, first answer token) of the first ``n`` unaugmented ARC-AGI-1 evaluation
    prompts of at most ``max_tokens``, the answer start found from the text, not by token ids."""
    from tests.support.arc_tasks import arc_tasks

    from arclens.prompts import PromptConfig, render_samples

    out = []
    for s in render_samples(arc_tasks("eval"), tokenizer, PromptConfig(augment=False, with_answer=True)):
        if len(s.token_ids) <= max_tokens:
            cut = s.text.rindex(ASSISTANT_HEADER) + len(ASSISTANT_HEADER)
            start = len(tokenizer(s.text[:cut])["input_ids"])
            assert np.array_equal(tokenizer(s.text)["input_ids"][:start], s.token_ids[:start])
            out.append((s.token_ids, start))
            if len(out) == n:
                break
    return out


def _hf_answer_loss(model_dir, prompts) -> float:
    import torch
    from tests.support.reference import load_hf

    model = load_hf(model_dir)
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, start in prompts:
            t = torch.as_tensor(ids, dtype=torch.long)[None]
            logits = model(input_ids=t, use_cache=False).logits[0].float()
            total += float(torch.nn.functional.cross_entropy(logits[start - 1:-1], t[0, start:], reduction="sum"))
            count += len(ids) - start
    return total / count


def test_toy_model_learns_on_held_out_evaluation_prompts(toy_dir, tiny_model_dir, tokenizer):
    from arclens.prompts import load_tokenizer

    toy_tok = load_tokenizer(str(toy_dir))
    assert (toy_dir / "tokenizer.json").read_text() == (tiny_model_dir / "tokenizer.json").read_text()
    prompts = _eval_prompts(toy_tok, max_tokens=768)
    random_loss = _hf_answer_loss(tiny_model_dir, prompts)
    toy_loss = _hf_answer_loss(toy_dir, prompts)
    print(f"held-out answer loss: random tiny {random_loss:.3f} nats, toy {toy_loss:.3f} nats")
    assert random_loss > 6.0  # ~ln(1024): the random model knows nothing
    assert toy_loss < 0.5 * random_loss
    # The run's own report (its held-out set is the same kind of prompt) agrees in direction.
    ev = json.loads((toy_dir / "config.json").read_text())["arclens_toy"]["eval"]
    assert ev["trained"] < 0.5 * ev["random_init"]


def test_toy_model_loads_in_transformers_with_arclens_logits(toy_dir):
    import jax.numpy as jnp
    from tests.support.reference import hf_captures, load_hf, rel_err

    from arclens.model.loading import load_model
    from arclens.model.qwen import forward_jit
    from arclens.prompts import load_tokenizer

    ids, _ = _eval_prompts(load_tokenizer(str(toy_dir)), n=1)[0]
    _, config, params = load_model(str(toy_dir), dtype=jnp.float32)
    ours = np.asarray(forward_jit(params, config, jnp.asarray(ids[None]), hooks=("blocks.3.hook_resid_post",),
                                  logits=True)["logits"])
    ref = hf_captures(load_hf(toy_dir), ids[None], [3])
    assert ours.shape == ref["logits"].shape == (1, len(ids), config.vocab_size)
    assert rel_err(ours, ref["logits"]) < 1e-5


def test_toy_model_is_labelled_a_toy(toy_dir):
    config = json.loads((toy_dir / "config.json").read_text())
    assert "arclens_random" not in config and "TOY" in config["arclens_note"]
    toy = config["arclens_toy"]
    assert toy["tasks"] == {"source": "arc-agi-1/training", "count": 400}
    assert toy["steps_done"] == toy["settings"]["steps"] == 30 and toy["stopped_by"] is None
    assert toy["settings"]["seed"] == 0 and toy["settings"]["max_prompt_tokens"] == 768
    assert toy["history"][-1]["step"] == 30 and toy["tokens_seen"] > 0
    readme = (toy_dir / "README.md").read_text()
    assert readme.startswith("# TOY MODEL") and "arc-agi-1/training" in readme
    assert sorted(p.name for p in toy_dir.iterdir()) == [
        "README.md", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
        "tokenizer_config.json"]


def test_store_of_a_toy_model_says_toy(toy_dir, tmp_path):
    from tests.support.tasks import write_small_tasks

    tasks = write_small_tasks(tmp_path / "tasks.json", 2)
    r = run_cli(["extract", "--model", toy_dir, "--tasks", tasks, "--out", tmp_path / "store", "--layers", "1",
                 "--predictions-per-task", "1", "--dtype", "float32"])
    assert r.returncode == 0, r.stderr[-2000:]
    meta = json.loads((tmp_path / "store" / "metadata.json").read_text())
    assert meta["model"]["toy_weights"] is True and meta["model"]["random_weights"] is False
    r = run_cli(["inspect", tmp_path / "store"], COLUMNS="200")
    assert r.returncode == 0 and "TOY MODEL" in r.stdout


def test_same_seed_same_weights(tmp_path):
    """Deterministic given the seed: two runs write byte-identical weights; another seed differs."""
    from arclens.pipeline.toy_model import ToySettings, run

    def weights(name, seed):
        run(ToySettings(out=tmp_path / name, tasks_source="arc-agi-1/training", steps=2, batch_tokens=2048,
                        max_prompt_tokens=512, predictions_per_task=1, seed=seed, eval_tasks=None),
            log=lambda m: None)
        return (tmp_path / name / "model.safetensors").read_bytes()

    a, b, c = weights("a", 0), weights("b", 0), weights("c", 1)
    assert a == b and a != c


def test_sigterm_saves_the_model_trained_so_far(tmp_path):
    out = tmp_path / "toy"
    p = start_cli(["toy-model", out, "--tasks", "arc-agi-1/training", "--max-tasks", "40", "--steps", "100000",
                   "--batch-tokens", "2048", "--predictions-per-task", "2", "--eval-tasks", "none"], tmp_path / "log")
    try:
        deadline = time.time() + 240
        while "step 1/" not in (tmp_path / "log").read_text():  # one step done
            assert p.poll() is None and time.time() < deadline, (tmp_path / "log").read_text()[-2000:]
            time.sleep(0.2)
        p.send_signal(signal.SIGTERM)
        assert p.wait(240) == 143, (tmp_path / "log").read_text()[-2000:]
    finally:
        if p.poll() is None:
            p.kill()
    toy = json.loads((out / "config.json").read_text())["arclens_toy"]
    assert toy["stopped_by"] == "SIGTERM" and 1 <= toy["steps_done"] < 100000
    assert "STOPPED EARLY by SIGTERM" in (out / "README.md").read_text()
    assert [q.name for q in tmp_path.iterdir() if q.name.startswith(".")] == []  # no staging left


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    from arclens.cli import main

    tasks = tmp_path / "no_outputs.json"
    tasks.write_text(json.dumps({"t1": {"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[3]]}]}}))
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("keep me")
    cases = [
        (["toy-model", tmp_path / "a", "--tasks", tasks, "--eval-tasks", "none"], "needs the test output"),
        # missing parents are made only once the settings and tasks are checked
        (["toy-model", tmp_path / "d" / "e", "--tasks", tasks, "--eval-tasks", "none"], "needs the test output"),
        (["toy-model", busy / "x" / "sub", "--tasks", "arc-agi-1/training"], "not a writable directory"),
        (["toy-model", busy, "--tasks", "arc-agi-1/training"], "not an empty directory"),
        (["toy-model", tmp_path / "b", "--tasks", "arc-agi-1/training", "--steps", "0"], "--steps"),
        (["toy-model", tmp_path / "c", "--tasks", "arc-agi-1/training", "--lr", "-1"], "--lr"),
    ]
    for args, words in cases:
        assert main([str(a) for a in args]) == 2, args
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and words in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "no_outputs.json"]
    assert (busy / "x").read_text() == "keep me"


def test_toy_logits_are_forwards_logits(tiny_model_dir):
    """The trainer's logits (the model's building blocks, attention in query blocks of 128) are
    forward()'s, on right-padded rows of every kind: full, partial across a block edge, empty."""
    import jax.numpy as jnp

    from arclens.model.loading import load_model
    from arclens.model.qwen import forward_jit
    from arclens.pipeline.toy_training import ATTN_Q_BLOCK, toy_logits

    _, config, params = load_model(str(tiny_model_dir), dtype=jnp.float32)
    t = 3 * ATTN_Q_BLOCK + 40  # not a multiple of the block
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, (4, t)).astype(np.int32)
    lengths = np.array([t, ATTN_Q_BLOCK + 7, 1, 0], np.int32)
    ours = np.asarray(toy_logits(params, config, jnp.asarray(tokens), jnp.asarray(lengths)))
    ref = np.asarray(forward_jit(params, config, jnp.asarray(tokens), jnp.asarray(lengths), logits=True,
                                 attn_impl="xla")["logits"])
    for row, n in enumerate(lengths):  # values at padded positions are meaningless in both
        np.testing.assert_allclose(ours[row, :n], ref[row, :n], rtol=1e-5, atol=1e-5)
    assert np.isfinite(ours).all()


def test_answer_start_is_after_the_last_assistant_header(tokenizer):
    header = tokenizer.encode(ASSISTANT_HEADER, add_special_tokens=False)
    text = "<|im_start|>assistant\nnot this<|im_end|>\n<|im_start|>user\nq<|im_end|>\n" + ASSISTANT_HEADER + "12\n3"
    ids = np.asarray(tokenizer(text)["input_ids"])
    start = answer_start(ids, header, "k")
    assert tokenizer.decode(ids[start:]) == "12\n3"
    from arclens.errors import UserError

    with pytest.raises(UserError, match="no answer"):
        answer_start(ids[:start], header, "k")


def test_batch_plan_covers_every_example_once_with_one_shape_per_length():
    rng = np.random.default_rng(0)
    examples = [Example(f"k{i}", np.arange(n, dtype=np.int32) + 1, n // 2)
                for i, n in enumerate(rng.integers(3, 1500, 57))]
    plan = batch_plan(examples, 4096, np.random.default_rng(1))
    seen = sorted(i for rows in plan for i in rows if i >= 0)
    assert seen == list(range(len(examples)))
    for rows in plan:
        tokens, lengths, starts = collate(examples, rows)
        t = bucket_length(max(len(examples[i].token_ids) for i in rows if i >= 0))
        assert tokens.shape == (max(1, 4096 // t), t)
        for r, i in enumerate(rows):
            if i < 0:
                assert lengths[r] == 0 and not tokens[r].any()
            else:
                n = len(examples[i].token_ids)
                assert lengths[r] == n and starts[r] == n // 2
                assert np.array_equal(tokens[r, :n], examples[i].token_ids) and not tokens[r, n:].any()


def test_cli_defaults_are_the_library_defaults():
    from arclens.cli import build_parser
    from arclens.pipeline.toy_model import ToySettings, settings_from_args

    args = build_parser().parse_args(["toy-model", "d", "--tasks", "arc-agi-1/training"])
    assert settings_from_args(args) == ToySettings(out=Path("d"), tasks_source="arc-agi-1/training")
