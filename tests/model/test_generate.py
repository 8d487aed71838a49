"""Greedy KV-cache generation against transformers' `generate(do_sample=False)`.

The reference is a random-weight Qwen2 written by transformers' own `save_pretrained` (untied
head, perturbed norm weights, no EOS so nothing stops early), run one prompt at a time; ours runs
prompts of different lengths together in right-padded batches, with compaction as rows finish.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from arclens.model import qwen
from arclens.model.config import QwenConfig
from arclens.model.generate import (
    GenerateStats,
    StopRule,
    fence_tables,
    generate,
)
from arclens.model.hooks import parse_hooks
from arclens.model.loading import load_params

NEW = 72  # >= 64 new tokens compared token for token
LENGTHS = (5, 37, 13, 22, 9)  # different lengths; batch 4 leaves a padded second batch
VOCAB = 384


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    cfg = transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, rope_theta=10000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=False, eos_token_id=None, bos_token_id=None, pad_token_id=0,
    )
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # HF initialises norms to 1 and biases to 0; random ones catch more bugs
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
            if name.endswith("bias"):
                p.normal_(0, 0.05)
            if "embed" in name or "lm_head" in name:
                p.normal_(0, 0.5)  # sharper logits: fewer near-ties for argmax
    path = tmp_path_factory.mktemp("hfgen") / "m"
    model.save_pretrained(path)
    return model, path


@pytest.fixture(scope="module")
def ours(hf_model):
    _, path = hf_model
    config = QwenConfig.from_pretrained(path)
    return config, load_params(path, config, dtype=jnp.float32)


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.default_rng(7)
    return [rng.integers(1, VOCAB, size=n).astype(np.int32) for n in LENGTHS]


@pytest.fixture(scope="module")
def reference(hf_model, prompts):
    """transformers, one prompt at a time: (tokens [NEW], float32 logprobs [NEW]) per prompt."""
    model, _ = hf_model
    out = []
    for p in prompts:
        with torch.no_grad():
            r = model.generate(torch.tensor(p[None].astype(np.int64)), max_new_tokens=NEW, do_sample=False,
                               output_logits=True, return_dict_in_generate=True)
        toks = r.sequences[0, len(p):].numpy().astype(np.int32)
        logits = torch.stack(r.logits, 1)[0].float()
        lps = torch.log_softmax(logits, -1).gather(-1, torch.tensor(toks[:, None].astype(np.int64)))[:, 0].numpy()
        assert len(toks) == NEW
        out.append((toks, lps))
    return out


def _run(ours, prompts, **kw):
    config, params = ours
    kw.setdefault("max_new_tokens", NEW)
    kw.setdefault("batch_size", 4)
    kw.setdefault("chunk", 8)  # one compiled shape set shared by the tests
    res = dict(generate(params, config, prompts, **kw))
    return [res[i] for i in range(len(prompts))]


def test_greedy_tokens_and_logprobs_match_transformers(ours, prompts, reference):
    stats = GenerateStats()
    gens = _run(ours, prompts, stats=stats)
    for g, (toks, lps), p in zip(gens, reference, prompts, strict=True):
        np.testing.assert_array_equal(g.token_ids, toks)
        np.testing.assert_allclose(g.logprobs, lps, atol=1e-4, rtol=0)
        assert g.stop_reason == "length"
        np.testing.assert_array_equal(g.positions, np.arange(len(p) - 1, len(p) - 1 + NEW))
    assert stats.new_tokens == NEW * len(prompts) and stats.batches == 2


def _first(seq, tok, nth=1):
    hits = np.flatnonzero(seq == tok)
    return int(hits[nth - 1]) if len(hits) >= nth else None


def test_eos_stops_each_row_where_transformers_would(ours, prompts, reference):
    # An EOS that one row produces early, at a step where it has not produced it before.
    row0 = reference[0][0]
    eos = int(next(t for k, t in enumerate(row0) if k >= 6 and t not in row0[:k]))
    stats = GenerateStats()
    gens = _run(ours, prompts, stop=StopRule(eos_ids=(eos, VOCAB + 5)), stats=stats)
    for g, (toks, lps) in zip(gens, reference, strict=True):
        cut = _first(toks, eos)
        want = toks if cut is None else toks[: cut + 1]  # the EOS itself is part of the output
        np.testing.assert_array_equal(g.token_ids, want)
        np.testing.assert_allclose(g.logprobs, lps[: len(want)], atol=1e-4, rtol=0)
        assert g.stop_reason == ("length" if cut is None else "eos")
    assert gens[0].stop_reason == "eos" and len(gens[0].token_ids) < NEW
    # Finished rows were dropped from the batch: fewer row-steps than rows x steps.
    assert stats.row_steps < 4 * 2 * (NEW - 1)


def test_fence_stop_after_the_needed_number_of_fences(ours, prompts, reference):
    toks0 = reference[1][0]
    # Pretend one token the model emits is "```": row 1 must stop at its second occurrence
    # when 2 fences are needed, at its first when 1 is (the prompt left a block open).
    counts = np.bincount(toks0, minlength=VOCAB)
    fence_tok = int(np.flatnonzero(counts >= 2)[0])
    texts = ["x"] * VOCAB
    texts[fence_tok] = "```"
    fc, fs = fence_tables(texts)
    rule = StopRule(fence_count=fc, fence_state=fs)
    for needed in (1, 2):
        gens = _run(ours, prompts[:2], stop=rule, fences_needed=[needed, needed])
        cut = _first(toks0, fence_tok, needed)
        np.testing.assert_array_equal(gens[1].token_ids, toks0[: cut + 1])
        assert gens[1].stop_reason == "fence"


def test_fence_tables_count_like_str_count():
    texts = ["a", "`", "``", "```", "x```y", "````", "", "`a`", "``\n", "b``"]
    fc, fs = fence_tables(texts)
    rng = np.random.default_rng(0)
    for _ in range(300):
        seq = rng.integers(0, len(texts), size=rng.integers(1, 12))
        state, count = 0, 0
        for t in seq:
            count += fc[t, state]
            state = fs[t, state]
        assert count == "".join(texts[t] for t in seq).count("```"), [texts[t] for t in seq]


def test_captures_equal_forward_at_the_producing_positions(ours, prompts):
    config, params = ours
    hooks = parse_hooks(["blocks.0.hook_resid_pre", "blocks.1.hook_attn_out", "blocks.1.hook_resid_mid",
                         "blocks.2.hook_mlp_out", "blocks.2.hook_resid_post"], config.n_layers)
    gens = _run(ours, prompts[:4], hooks=hooks, max_new_tokens=20)
    # The reference: one right-padded forward pass over prompt + generated tokens.
    full = [np.concatenate([p, g.token_ids]) for p, g in zip(prompts, gens, strict=False)]
    tokens = np.zeros((len(full), max(map(len, full))), np.int32)
    for r, f in enumerate(full):
        tokens[r, : len(f)] = f
    lengths = jnp.asarray([len(f) for f in full], jnp.int32)
    ref = qwen.forward_jit(params, config, jnp.asarray(tokens), lengths, hooks=hooks)
    for r, g in enumerate(gens):
        for h in hooks:
            assert g.captures[h.name].shape == (len(g.token_ids), config.hidden_size)
            np.testing.assert_allclose(g.captures[h.name], np.asarray(ref[h.name][r, g.positions]), atol=1e-4)


def test_tokenizer_fence_tables_on_arc_answers(tokenizer):
    from arclens.model.generate import tokenizer_fence_tables

    fc, fs = tokenizer_fence_tables(tokenizer, 1024)
    for text in (" shape: 2x3\n1 123\n2 456\n```", "```grid shape: 1x1\n1 7\n```<|im_end|>", "no fence", "`` `` ```` ``"):
        state = count = 0
        for t in tokenizer(text, add_special_tokens=False)["input_ids"]:
            count += fc[t, state]
            state = fs[t, state]
        assert count == text.count("```"), text
