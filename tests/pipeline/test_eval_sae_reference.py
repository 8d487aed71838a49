"""eval-sae's numbers against transformers' Qwen2 in float32 with replacement forward hooks.

The reference replaces the SAE's hook by SAELens's own reconstruction of the same SAE folder
(``SAE.load_from_disk``), by zeros and by the hook's mean over the evaluated tokens, on real
ARC-AGI-1 prompts of 300 tokens or more (arc24 training prompts, with their answers), one prompt at
a time and unpadded; ours runs them as one padded batch through ``eval_sae_metrics.evaluate``.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from tests.support.reference import (
    hf_logits,
    kl_divergence,
    next_token_ce,
    replacement_hooks,
    saelens_reconstruction,
    shared_hf,
    torch_threads,
)

from arclens.model.loading import load_model
from arclens.pipeline.eval_sae_metrics import VARIANTS, eval_prompts, evaluate
from arclens.sae import SAEConfig, new_sae, save
from arclens.sae import load as load_sae

torch = pytest.importorskip("torch")
pytest.importorskip("sae_lens")


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    with torch_threads(1):
        yield


TOL = 1e-4
D, M = 64, 256


@pytest.fixture(scope="module")
def prompts(tokenizer):
    """Three real ARC-AGI-1 evaluation tasks whose training prompts have 300 to 900 tokens."""
    from tests.support.arc_tasks import arc_tasks

    from arclens.prompts import PromptConfig, render_samples

    config = PromptConfig(augment=False, with_answer=True)
    picked = []
    for task in arc_tasks("eval", 40):
        samples = list(render_samples([task], tokenizer, config))[:1]
        if 300 <= len(samples[0].token_ids) <= 900:
            picked += samples
        if len(picked) == 3:
            break
    out = eval_prompts(picked, tokenizer)
    assert len(out) == 3 and min(len(p.token_ids) for p in out) >= 300
    assert all(0 < p.answer_start < len(p.token_ids) - 20 for p in out)
    return out


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    _, config, params = load_model(str(tiny_model_dir), jnp.float32)
    return config, params


def _sae(folder, arch, hook, hook_out=None, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(M, D))
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    cfg = SAEConfig(arch, D, M, D, k=16 if arch == "topk" else None, hook_name=hook, hook_name_out=hook_out,
                    apply_b_dec_to_input=hook_out is None)
    threshold = np.full(M, 0.2) if arch == "jumprelu" else None
    w_dec = 3 * w if hook_out else w  # a transcoder's prediction, loud enough to change the model
    save(new_sae(cfg, 0.8 * w.T, rng.normal(size=M) * 0.05, w_dec, rng.normal(size=D) * 0.05, threshold), str(folder))
    return load_sae(str(folder))


def _reference(hf, prompts, fn, hook_in, hook_out, sae_lens_sae):
    """Everything evaluate() reports, computed with transformers + SAELens, pooled in float64."""
    reads = (hook_in, hook_out)
    acts_in, acts_out, clean = [], [], []
    for p in prompts:
        with replacement_hooks(hf, {}, reads=reads) as seen:
            clean.append(hf_logits(hf, p.token_ids[None])[0])
        acts_in.append(seen[hook_in][0, :-1].float())
        acts_out.append(seen[hook_out][0, :-1].numpy().astype(np.float64))
    x = np.concatenate(acts_out)
    mean = torch.tensor(x.mean(0), dtype=torch.float32)
    replace = {
        "spliced": fn,
        "zero": lambda v, seen: torch.zeros_like(v),
        "mean": lambda v, seen: mean.expand_as(v).to(v.dtype),
    }
    ce = {v: [] for v in VARIANTS}
    kl, answer = [], []
    for p, c in zip(prompts, clean, strict=True):
        ce["clean"].append(next_token_ce(c, p.token_ids))
        for name, f in replace.items():
            with replacement_hooks(hf, {hook_out: f}, reads=(hook_in,)):
                logits = hf_logits(hf, p.token_ids[None])[0]
            ce[name].append(next_token_ce(logits, p.token_ids))
            if name == "spliced":
                kl.append(kl_divergence(c, logits)[:-1])
        answer.append(np.arange(1, len(p.token_ids)) >= p.answer_start)
    answer = np.concatenate(answer)
    ce = {v: np.concatenate(c) for v, c in ce.items()}
    kl = np.concatenate(kl)
    with torch.no_grad():
        z = sae_lens_sae.encode(torch.cat(acts_in))
        x_hat = sae_lens_sae.decode(z).numpy().astype(np.float64)
    fired = (z != 0).numpy()
    return {
        "n_tokens": {"all": len(kl), "answer": int(answer.sum())},
        "ce": {"all": {v: ce[v].mean() for v in VARIANTS}, "answer": {v: ce[v][answer].mean() for v in VARIANTS}},
        "kl": {"all": kl.mean(), "answer": kl[answer].mean()},
        "fvu": ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum(),
        "l0": fired.sum(1).mean(),
        "dead_frac": float((fired.sum(0) == 0).mean()),
    }


CASES = [
    ("topk", "blocks.1.hook_resid_post", None),
    ("standard", "blocks.2.hook_mlp_out", None),
    ("jumprelu", "blocks.0.hook_attn_out", None),
    ("standard", "blocks.1.hook_resid_mid", "blocks.1.hook_mlp_out"),  # a transcoder
]


@pytest.mark.parametrize("arch,hook,hook_out", CASES, ids=[c[1] + ("->" + c[2] if c[2] else "") for c in CASES])
def test_eval_sae_equals_transformers_with_replacement_hooks(model, prompts, tiny_model_dir, tmp_path, arch, hook,
                                                             hook_out):
    config, params = model
    sae = _sae(tmp_path / "sae", arch, hook, hook_out)
    fn, sl_sae = saelens_reconstruction(tmp_path / "sae")
    ours = evaluate(sae, params, config, prompts, tokens_per_batch=8192, max_shapes=1)  # one padded batch
    ref = _reference(shared_hf(tiny_model_dir), prompts, fn, hook, hook_out or hook, sl_sae)

    assert ours["n_tokens"] == ref["n_tokens"]
    for k in ("all", "answer"):
        for v in VARIANTS:
            assert ours["ce"][k][v] == pytest.approx(ref["ce"][k][v], rel=TOL), (k, v)
        assert ours["kl"][k] == pytest.approx(ref["kl"][k], rel=1e-3, abs=1e-7), k
        o, c = ours["ce"][k], ref["ce"][k]
        # (the ratio itself is ill-conditioned where zero ablation barely matters: check the formula)
        assert ours["loss_recovered"][k] == pytest.approx((o["zero"] - o["spliced"]) / (o["zero"] - o["clean"]))
        # The splice really changes the model, by far more than the tolerances.
        assert ref["kl"][k] > 1e-3
        if k == "all":
            assert abs(c["spliced"] - c["clean"]) > 20 * TOL * c["clean"]
    assert ours["fvu"] == pytest.approx(ref["fvu"], rel=TOL)
    assert ours["l0"] == pytest.approx(ref["l0"], rel=1e-3)
    assert ours["dead_frac"] == pytest.approx(ref["dead_frac"], abs=2 / M)
