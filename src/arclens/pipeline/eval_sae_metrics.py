"""The device side of `arclens eval-sae` (pipeline/eval_sae.py is the command): batches of arc24
training prompts in, the metrics of SPEC.md section 6 out.

Device passes (docs/INTERVENTIONS.md):

1. **The mean, first** (an ``attn_out`` or ``mlp_out`` hook). Mean ablation needs the hook's mean
   over the evaluated tokens before any batch can use it, so a first pass runs every batch through
   the layers up to the hook only (``forward`` stops after the deepest requested hook: no later
   layers, no LM head) and sums the activation in float32 per batch, float64 across batches.
2. **One program per batch.** The variants are ``forward`` calls with different edits inside one
   jitted function; the layers before the edit are the same computation on the same inputs in
   all of them, and XLA's common-subexpression pass computes them once (checked by counting the
   compiled program's dot products in tests/pipeline/test_eval_sae.py). The LM head runs over
   position chunks (``lax.map``), so ``[B, T, V]`` logits never exist at once; per chunk it gives
   the variants' cross-entropies and the KL. Only sums leave the device.
3. **A residual hook's zero and mean ablations need no pass at all.** Replacing ``resid_pre``,
   ``resid_mid`` or ``resid_post`` by one vector at every position makes the rest of the model
   see the same vector everywhere: attention averages identical values (``sum_s p_s v = v``),
   so every later activation, and the logits, are one vector, the same at every position. Their
   cross-entropy is then ``-counts . log_softmax(logits)`` with ``counts`` the targets'
   histogram (host side), and those logits are one token's forward pass, run once at the end
   with the mean from pass 2's clean captures. So a residual hook costs one program per batch
   with two variants (clean, spliced) and no first pass: about half the work of four.
Tokens: position p of a prompt predicts its token p + 1. ``all`` is every such prediction;
``answer`` those whose target is in the assistant's reply (after the last assistant header),
what arc24 fine-tunes on. FVU, L0 and the dead fraction are over the ``all`` tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from arclens.errors import UserError

VARIANTS = ("clean", "spliced", "zero", "mean")
MAX_SHAPES = 8  # compiled batch lengths per run (up to two programs each: the mean pass and the eval)
LOGITS_CHUNK_ELEMENTS = 1 << 27  # variants x rows x positions x vocab per head chunk (512 MB fp32)
# Hooks whose zero/mean ablation turns the residual stream into one vector (module docstring, 3).
CONSTANT_STREAM_KINDS = ("resid_pre", "resid_mid", "resid_post")
MEAN_ABLATION_NOTE = {
    "pass": "the hook's mean over every evaluated token, from a first pass up to the hook's layer",
    "constant": "the hook's mean over every evaluated token; the residual stream replaced by one vector gives "
                "one logit vector for every position, computed once after the pass",
}


@dataclass(frozen=True)
class EvalPrompt:
    key: str
    token_ids: np.ndarray  # int32 [n]
    answer_start: int  # position of the first token of the assistant's reply


# ---------------------------------------------------------------------------------------------
# Where the reply starts


def assistant_header(tokenizer) -> str:
    """The text the chat template puts between the end of a user turn's content and the start of an
    assistant turn's content (for Qwen: ``<|im_end|>\\n<|im_start|>assistant\\n``)."""
    user, reply = "\ue002", "\ue003"
    text = tokenizer.apply_chat_template(
        [{"role": "system", "content": "s"}, {"role": "user", "content": user}, {"role": "assistant", "content": reply}],
        tokenize=False, add_generation_prompt=False,
    )
    return text[text.index(user) + 1 : text.index(reply)]


def eval_prompts(samples, tokenizer) -> list[EvalPrompt]:
    """Each sample with the position of its reply's first token: the first token that starts at
    or after the end of the last assistant header of its text."""
    header = assistant_header(tokenizer)
    encodings = tokenizer.backend_tokenizer.encode_batch([s.text for s in samples], add_special_tokens=True)
    out = []
    for s, enc in zip(samples, encodings, strict=True):
        at = s.text.rfind(header)
        if at < 0 or not np.array_equal(np.asarray(enc.ids, np.int32), s.token_ids):
            raise UserError(f"sample {s.key}: cannot find the assistant's reply in its prompt "
                            "(the tokenizer's chat template has no assistant header arclens recognises)")
        starts = np.fromiter((o[0] for o in enc.offsets), np.int64, len(enc.ids))
        first = int(np.searchsorted(starts, at + len(header), side="left"))
        out.append(EvalPrompt(s.key, s.token_ids, first))
    return out


# ---------------------------------------------------------------------------------------------
# The device side


def _masks(tokens, lengths, answer_start):
    import jax.numpy as jnp

    b, t = tokens.shape
    pos = jnp.arange(t, dtype=jnp.int32)[None]
    predicting = pos < (lengths - 1)[:, None]  # position p predicts token p + 1 of its prompt
    answer = predicting & (pos + 1 >= answer_start[:, None])
    targets = jnp.concatenate([tokens[:, 1:], jnp.zeros((b, 1), tokens.dtype)], axis=1)
    return predicting, answer, targets


def _mean_sums(params, tokens, lengths, answer_start, *, config, hook):
    """First pass: the sum and count of the hook's activation over the predicting tokens."""
    import jax.numpy as jnp

    from arclens.model.qwen import forward

    x = forward(params, config, tokens, lengths, hooks=(hook,))[hook].astype(jnp.float32)
    predicting, _, _ = _masks(tokens, lengths, answer_start)
    return jnp.sum(jnp.where(predicting[..., None], x, 0.0), axis=(0, 1)), jnp.sum(predicting)


def _chunk(variants: int, batch: int, seq_len: int, vocab: int) -> int:
    """Positions per head chunk: a power of two dividing seq_len within LOGITS_CHUNK_ELEMENTS."""
    c = 1
    while seq_len % (2 * c) == 0 and variants * batch * (2 * c) * vocab <= LOGITS_CHUNK_ELEMENTS:
        c *= 2
    return c


def _token_losses(params, config, finals, targets):
    """``finals`` [V, B, T, D] final residuals of the variants -> (ce [V, B, T], kl [B, T]), in
    float32, KL(clean || spliced) with variant 0 clean and 1 spliced."""
    import jax
    import jax.numpy as jnp

    from arclens.model.qwen import unembed

    nv, b, t, d = finals.shape
    c = _chunk(nv, b, t, config.vocab_size)
    xs = finals.reshape(nv, b, t // c, c, d).transpose(2, 0, 1, 3, 4)
    tg = targets.reshape(b, t // c, c).transpose(1, 0, 2)

    def one(args):
        h, tgt = args
        logp = jax.nn.log_softmax(unembed(params, config, h, dtype=jnp.float32), axis=-1)  # [nv, B, c, V]
        ce = -jnp.take_along_axis(logp, jnp.broadcast_to(tgt[None, ..., None], (nv, b, c, 1)), axis=-1)[..., 0]
        kl = jnp.sum(jnp.exp(logp[0]) * (logp[0] - logp[1]), axis=-1)
        return ce, kl

    ce, kl = jax.lax.map(one, (xs, tg))  # [n, nv, B, c], [n, B, c]
    return ce.transpose(1, 2, 0, 3).reshape(nv, b, t), kl.transpose(1, 0, 2).reshape(b, t)


def _batch_sums(params, sae, mean_act, tokens, lengths, answer_start, *, config):
    """One batch, one program: every sum the metrics need (module docstring, pass 2). Variants
    clean, spliced, and zero and mean unless ``mean_act`` is None (a residual hook: pass 3)."""
    import jax.numpy as jnp

    from arclens.model.edits import mean, zero
    from arclens.model.qwen import forward
    from arclens.sae import decode, encode
    from arclens.sae.edits import splice

    hook_in, hook_out = sae.cfg.hook_name, sae.cfg.output_hook
    last = f"blocks.{config.n_layers - 1}.hook_resid_post"
    clean = forward(params, config, tokens, lengths, hooks=tuple({hook_in, hook_out, last}))
    finals = [clean[last]]
    for edit in (splice(sae),) if mean_act is None else (splice(sae), zero(), mean(mean_act)):
        finals.append(forward(params, config, tokens, lengths, hooks=(last,), edits={hook_out: edit})[last])
    predicting, answer, targets = _masks(tokens, lengths, answer_start)
    ce, kl = _token_losses(params, config, jnp.stack(finals), targets)

    out = {}
    for name, m in (("all", predicting), ("answer", answer)):
        out[f"n_{name}"] = jnp.sum(m)
        out[f"ce_{name}"] = jnp.sum(jnp.where(m[None], ce, 0.0), axis=(1, 2))  # [variants]
        out[f"kl_{name}"] = jnp.sum(jnp.where(m, kl, 0.0))
    z = encode(sae, clean[hook_in])
    x = clean[hook_out].astype(jnp.float32)
    err = x - decode(sae, z).astype(jnp.float32)
    m = predicting[..., None]
    out["sse"] = jnp.sum(jnp.where(m, err * err, 0.0))
    out["sum_x"] = jnp.sum(jnp.where(m, x, 0.0), axis=(0, 1))
    out["sum_x2"] = jnp.sum(jnp.where(m, x * x, 0.0))
    fired = jnp.where(m, z != 0, False)
    out["l0_sum"] = jnp.sum(fired, dtype=jnp.float32)
    out["fired"] = jnp.sum(fired, axis=(0, 1), dtype=jnp.int32)
    return out


def _constant_stream_logp(params, mean_act, *, config, hook):
    """log-probabilities [2, V] (zero, mean) of the model with the residual stream at ``hook``
    replaced by zeros or by ``mean_act``: the same at every position (module docstring, pass 3),
    so one token's forward pass gives them."""
    import jax
    import jax.numpy as jnp

    from arclens.model.edits import mean, zero
    from arclens.model.qwen import forward, unembed

    last = f"blocks.{config.n_layers - 1}.hook_resid_post"
    one = jnp.zeros((1, 1), jnp.int32)
    finals = [forward(params, config, one, hooks=(last,), edits={hook: e})[last][0, 0] for e in (zero(), mean(mean_act))]
    return jax.nn.log_softmax(unembed(params, config, jnp.stack(finals), dtype=jnp.float32), axis=-1)


_jitted: dict = {}
_STATIC = {"mean": ("config", "hook"), "batch": ("config",), "constant": ("config", "hook")}


def _jit(name):
    import jax

    if name not in _jitted:
        fn = {"mean": _mean_sums, "batch": _batch_sums, "constant": _constant_stream_logp}[name]
        _jitted[name] = jax.jit(fn, static_argnames=_STATIC[name])
    return _jitted[name]


def _target_counts(prompts: list[EvalPrompt], vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """How often each token id is predicted: over the ``all`` and the ``answer`` tokens."""
    every = np.concatenate([p.token_ids[1:] for p in prompts])
    answer = np.concatenate([p.token_ids[max(p.answer_start, 1):] for p in prompts])
    return np.bincount(every, minlength=vocab), np.bincount(answer, minlength=vocab)


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class _Totals:
    sums: dict = field(default_factory=dict)

    def add(self, batch: dict) -> None:
        for k, v in batch.items():
            v = np.asarray(v, np.float64)
            self.sums[k] = v if k not in self.sums else self.sums[k] + v


def _batches(prompts: list[EvalPrompt], tokens_per_batch: int, max_shapes: int):
    from arclens.pipeline.batching import plan_batches

    schedule = plan_batches([len(p.token_ids) for p in prompts], [p.key for p in prompts],
                            tokens_per_batch=tokens_per_batch, max_shapes=max_shapes)
    for batch in schedule.batches:
        b, t = batch.shape
        tokens = np.zeros((b, t), np.int32)
        lengths = np.ones(b, np.int32)  # padding rows: one token, which predicts nothing
        answer_start = np.full(b, t, np.int32)
        for r, i in enumerate(batch.rows):
            p = prompts[i]
            tokens[r, : len(p.token_ids)] = p.token_ids
            lengths[r], answer_start[r] = len(p.token_ids), p.answer_start
        yield len(batch.rows), tokens, lengths, answer_start


def evaluate(sae, params, config, prompts: list[EvalPrompt], *, tokens_per_batch: int, max_shapes: int = MAX_SHAPES,
             progress=None) -> dict:
    """The metrics of SPEC.md section 6 (its ``n_tokens`` ... ``dead_frac`` keys) for ``sae`` in
    the model ``(params, config)`` over ``prompts``, in length-bucketed batches of about
    ``tokens_per_batch`` tokens and at most ``max_shapes`` lengths; ``progress(stage, done, total)``."""
    import jax
    import jax.numpy as jnp

    if not prompts:
        raise UserError("eval-sae: no prompts to evaluate")
    hook_out = sae.cfg.output_hook
    constant = hook_out.rsplit(".hook_", 1)[1] in CONSTANT_STREAM_KINDS
    batches = list(_batches(prompts, tokens_per_batch, max_shapes))
    mean_act = None
    if not constant:
        mean_sum, count = np.zeros(config.d_model), 0
        for k, (_, tokens, lengths, answer_start) in enumerate(batches):
            s, n = _jit("mean")(params, jnp.asarray(tokens), jnp.asarray(lengths), jnp.asarray(answer_start),
                                config=config, hook=hook_out)
            mean_sum += np.asarray(s, np.float64)
            count += int(n)
            if progress:
                progress("mean", k + 1, len(batches))
        mean_act = jnp.asarray(mean_sum / max(count, 1), jnp.float32)
    totals = _Totals()
    for k, (_, tokens, lengths, answer_start) in enumerate(batches):
        out = _jit("batch")(params, sae, mean_act, jnp.asarray(tokens), jnp.asarray(lengths),
                            jnp.asarray(answer_start), config=config)
        totals.add(jax.device_get(out))
        if progress:
            progress("eval", k + 1, len(batches))
    s = totals.sums
    if constant:
        mean_act = jnp.asarray(s["sum_x"] / max(s["n_all"], 1), jnp.float32)
        logp = np.asarray(_jit("constant")(params, mean_act, config=config, hook=hook_out), np.float64)  # [2, V]
        for name, counts in zip(("all", "answer"), _target_counts(prompts, config.vocab_size), strict=True):
            s[f"ce_{name}"] = np.concatenate([s[f"ce_{name}"], -(logp @ counts)])
    return {**_metrics(s), "mean_ablation": MEAN_ABLATION_NOTE["constant" if constant else "pass"]}


def _ratio(a: float, b: float) -> float | None:
    return None if b == 0 or not math.isfinite(a / b) else a / b


def _metrics(s: dict) -> dict:
    n = {k: int(s[f"n_{k}"]) for k in ("all", "answer")}
    ce = {k: {v: _ratio(float(s[f"ce_{k}"][i]), n[k]) for i, v in enumerate(VARIANTS)} for k in n}

    def recovered(c):
        if None in c.values():
            return None
        return _ratio(c["zero"] - c["spliced"], c["zero"] - c["clean"])

    total_var = float(s["sum_x2"]) - float(np.sum(s["sum_x"] ** 2)) / max(n["all"], 1)
    return {
        "n_tokens": n,
        "ce": ce,
        "loss_recovered": {k: recovered(ce[k]) for k in n},
        "kl": {k: _ratio(float(s[f"kl_{k}"]), n[k]) for k in n},
        "fvu": _ratio(float(s["sse"]), total_var),
        "l0": _ratio(float(s["l0_sum"]), n["all"]),
        "dead_frac": float(np.mean(s["fired"] == 0)),
        "dead_latents": int(np.sum(s["fired"] == 0)),
    }
