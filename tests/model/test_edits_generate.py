"""Edits during generation: greedy tokens with an SAE spliced in against transformers' `generate`
with the same replacement hook (SAELens's own reconstruction of the same SAE); the roles of
generated tokens; edits through batching and compaction."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from tests.support.reference import replacement_hooks, saelens_reconstruction, torch_threads

from arclens.model import edits as E
from arclens.model.config import QwenConfig
from arclens.model.edits import PromptRoles, batch_roles
from arclens.model.generate import GenerateStats, StopRule, generate
from arclens.model.loading import load_params
from arclens.model.qwen import forward_jit
from arclens.sae import SAEConfig, new_sae, save
from arclens.sae import load as load_sae
from arclens.sae.edits import splice

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("sae_lens")


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    with torch_threads(1):
        yield


NEW = 68  # >= 64 new tokens compared token for token
LENGTHS = (5, 37, 13, 22, 9)  # batch 4: two batches
VOCAB = 384
D = 64


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    """A random Qwen2 (untied head, perturbed norms, sharp logits, no EOS) as in test_generate."""
    cfg = transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=D, intermediate_size=160, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, rope_theta=10000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=False, eos_token_id=None, bos_token_id=None, pad_token_id=0,
    )
    torch.manual_seed(1)
    model = transformers.Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
            if name.endswith("bias"):
                p.normal_(0, 0.05)
            if "embed" in name or "lm_head" in name:
                p.normal_(0, 0.5)
    path = tmp_path_factory.mktemp("hfgen-edits") / "m"
    model.save_pretrained(path)
    config = QwenConfig.from_pretrained(path)
    return model, config, load_params(path, config, dtype=jnp.float32)


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.default_rng(11)
    return [rng.integers(1, VOCAB, size=n).astype(np.int32) for n in LENGTHS]


def _sae(folder, arch, hook, seed):
    """A random SAE whose reconstruction is close enough to keep the model coherent but far enough
    to change what it generates: decoder = transposed encoder, unit rows."""
    rng = np.random.default_rng(seed)
    m = 4 * D
    w = rng.normal(size=(m, D))
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    cfg = SAEConfig(arch, D, m, D, k=24 if arch == "topk" else None, hook_name=hook)
    save(new_sae(cfg, 1.2 * w.T, rng.normal(size=m) * 0.05, w, rng.normal(size=D) * 0.05), str(folder))
    return load_sae(str(folder))


def _ours(model, prompts, **kw):
    _, config, params = model
    kw.setdefault("max_new_tokens", NEW)
    res = dict(generate(params, config, prompts, batch_size=4, chunk=8, **kw))
    return [res[i] for i in range(len(prompts))]


@pytest.mark.parametrize("arch,hook", [("topk", "blocks.1.hook_resid_post"), ("standard", "blocks.0.hook_mlp_out")])
def test_greedy_generation_with_a_splice_equals_transformers_with_the_replacement_hook(
        hf_model, prompts, tmp_path, arch, hook):
    hf, config, params = hf_model
    prompts = prompts[:3]  # one batch of ours; three prompts of different lengths
    sae = _sae(tmp_path / "sae", arch, hook, seed=5)
    fn, _ = saelens_reconstruction(tmp_path / "sae")
    gens = _ours(hf_model, prompts, edits={hook: splice(sae)})
    changed = 0
    for p, g in zip(prompts, gens, strict=True):
        with torch.no_grad(), replacement_hooks(hf, {hook: fn}):
            r = hf.generate(torch.tensor(p[None].astype(np.int64)), max_new_tokens=NEW, do_sample=False,
                            output_logits=True, return_dict_in_generate=True)
        toks = r.sequences[0, len(p):].numpy().astype(np.int32)
        lps = torch.log_softmax(torch.stack(r.logits, 1)[0].float(), -1)
        lps = lps.gather(-1, torch.tensor(toks[:, None].astype(np.int64)))[:, 0].numpy()
        assert len(toks) == NEW
        np.testing.assert_array_equal(g.token_ids, toks)
        np.testing.assert_allclose(g.logprobs, lps, atol=1e-4, rtol=0)
        # The splice really changes what the model writes: the clean model, fed the same text,
        # would have chosen other tokens.
        full = np.concatenate([p, g.token_ids])[None]
        clean = np.asarray(forward_jit(params, config, jnp.asarray(full), logits=True)["logits"])[0].argmax(-1)
        changed += int(np.sum(clean[len(p) - 1 : -1] != g.token_ids))
    assert changed >= 10


def test_generated_tokens_are_the_answer_and_roles_follow_rows_through_compaction(hf_model, prompts):
    """steer(where=answer()) with per-prompt answer starts, rows stopping early at an EOS so the
    batch compacts: each row's tokens are the argmax of a teacher-forced forward pass with the
    same edit and roles (generated tokens: answer, no grid cells)."""
    _, config, params = hf_model
    direction = np.random.default_rng(4).normal(size=D).astype(np.float32)
    direction /= np.linalg.norm(direction)  # strong enough to change the text, not to flatten it
    roles = []
    for k, p in enumerate(prompts):
        grid = np.where(np.arange(len(p)) % 3 == 0, 2, -1)  # every third token "a cell of grid 2"
        roles.append(PromptRoles(grid, np.zeros(len(p)), np.zeros(len(p)), 1, max(0, len(p) - 1 - 2 * k)))
    where = E.answer() | E.cells("test_input")
    edits = {"blocks.1.hook_resid_mid": E.steer(direction, 1.0, where=where)}
    never = StopRule(eos_ids=(VOCAB + 1, VOCAB + 2))  # same shapes as the run below: no new compiles
    plain = _ours(hf_model, prompts, max_new_tokens=24, edits=edits, roles=roles, stop=never)
    # Rows 1 and 3 (two of the first batch's four) stop early, at a token they have not written before.
    eos = tuple(int(next(t for k, t in enumerate(plain[r].token_ids) if k >= 4 and t not in plain[r].token_ids[:k]))
                for r in (1, 3))
    stats = GenerateStats()
    gens = _ours(hf_model, prompts, max_new_tokens=24, edits=edits, roles=roles, stop=StopRule(eos_ids=eos),
                 stats=stats)
    assert stats.compactions >= 1 and min(len(g.token_ids) for g in gens) < 24
    # The reference: one right-padded teacher-forced forward pass over prompt + generated tokens.
    full = [np.concatenate([p, g.token_ids]) for p, g in zip(prompts, gens, strict=True)]
    t = max(map(len, full))
    tokens = np.zeros((len(full), t), np.int32)
    for i, f in enumerate(full):
        tokens[i, : len(f)] = f
    lengths = jnp.asarray([len(f) for f in full], jnp.int32)
    tr = batch_roles([PromptRoles(np.pad(r.grid, (0, t - len(r.grid)), constant_values=-1), np.zeros(t), np.zeros(t),
                                  r.n_train, r.answer_start) for r in roles], len(full), t)
    steered = np.asarray(forward_jit(params, config, jnp.asarray(tokens), lengths, logits=True, edits=edits,
                                     roles=tr)["logits"]).argmax(-1)
    clean = np.asarray(forward_jit(params, config, jnp.asarray(tokens), lengths, logits=True)["logits"]).argmax(-1)
    differs = 0
    for i, (p, g) in enumerate(zip(prompts, gens, strict=True)):
        at = slice(len(p) - 1, len(p) - 1 + len(g.token_ids))
        np.testing.assert_array_equal(g.token_ids, steered[i, at])
        differs += not np.array_equal(g.token_ids, clean[i, at])
    assert differs >= 2  # the steering (and so its filter) matters
