"""The training half of `arclens toy-model` (pipeline/toy_model.py): arc24 training prompts ->
padded batches -> next-token loss on the answer tokens -> AdamW; and the held-out report.

The loss is the next-token cross-entropy of ``model.qwen.forward(..., logits=True)``'s logits
(`toy_logits`: the same function, its attention in smaller query blocks) on the tokens after
the last assistant header (what arc24 fine-tunes on), pooled over the batch's answer tokens.
Prompts are right-padded to a multiple of BUCKET tokens, with ``batch_tokens // length`` rows, so a
run compiles one program per length and never more.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

import numpy as np

from arclens.errors import UserError

ASSISTANT_HEADER = "<|im_start|>assistant\n"
BUCKET = 256  # padded lengths are multiples of this
# Queries per block of the prefill attention (model.attention.self_attention). forward() uses the
# model's default (1024), which scores every prompt here as one T x T block, keys past each query
# included; attention was then ~3/4 of a training step on XLA:CPU. In blocks of 128 the keys
# past a block are never scored: a step of 4 x 1024 tokens took 0.73 s instead of 1.17 s, 5 x 768
# 0.59 s instead of 0.93 s (same loss and gradients), for ~3 s more compile per shape.
ATTN_Q_BLOCK = 128


@dataclass
class Example:
    """One training prompt: its token ids and where its answer starts (first answer token).
    For the held-out report: which tokens are cells of the answer grid, and the id of the test
    input's most frequent cell token (a baseline that guesses that colour everywhere)."""
    key: str
    token_ids: np.ndarray
    answer_start: int
    answer_cells: np.ndarray | None = None
    test_input_mode: int | None = None


@dataclass
class TrainResult:
    params: object
    steps_done: int
    stopped_by: str | None
    tokens_seen: int
    history: list[dict] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# prompts -> examples -> padded batches


def answer_start(token_ids: np.ndarray, header_ids: list[int], key: str) -> int:
    """Index of the first token after the LAST assistant header (arc24 trains on the reply)."""
    h = len(header_ids)
    ids = np.asarray(token_ids)
    windows = np.lib.stride_tricks.sliding_window_view(ids, h) if len(ids) >= h else np.empty((0, h))
    hits = np.flatnonzero((windows == np.asarray(header_ids)).all(axis=1))
    if len(hits) == 0 or hits[-1] + h >= len(ids):
        raise UserError(f"sample {key}: no answer after an assistant header (is this a --with-answer prompt?)")
    return int(hits[-1] + h)


def make_examples(tasks, tokenizer, prompt, max_prompt_tokens: int | None) -> tuple[list[Example], int]:
    """Render ``tasks`` (answers shown) into Examples; returns them and how many were longer
    than ``max_prompt_tokens`` and left out (arc24 drops over-long prompts the same way)."""
    from arclens.prompts import render_samples

    header = tokenizer.encode(ASSISTANT_HEADER, add_special_tokens=False)
    out, skipped = [], 0
    for s in render_samples(tasks, tokenizer, prompt):
        if max_prompt_tokens is not None and len(s.token_ids) > max_prompt_tokens:
            skipped += 1
            continue
        answer_grid = int(s.grid.max())  # with the answer shown, the answer is the last grid (SPEC 3)
        test_cells = s.token_ids[s.grid == 2 * len(s.augmentation.train_order)]  # the test input
        mode = int(np.bincount(test_cells).argmax()) if len(test_cells) else None
        out.append(Example(s.key, s.token_ids, answer_start(s.token_ids, header, s.key),
                           s.grid == answer_grid, mode))
    return out, skipped


def bucket_length(n: int) -> int:
    """Padded length: the next multiple of BUCKET tokens (a few shapes, so a few compiles)."""
    return max(BUCKET, -(-int(n) // BUCKET) * BUCKET)


def batch_plan(examples: list[Example], batch_tokens: int, rng: np.random.Generator) -> list[list[int]]:
    """One epoch: examples shuffled, grouped by padded length, cut into batches of
    ``batch_tokens // length`` rows, the batches shuffled. The last batch of a length is padded
    with empty rows (``-1``) so every length has one shape, hence one compile."""
    order = rng.permutation(len(examples))
    by_len: dict[int, list[int]] = {}
    for i in order:
        by_len.setdefault(bucket_length(len(examples[i].token_ids)), []).append(int(i))
    batches = []
    for t, idx in sorted(by_len.items()):
        rows = max(1, batch_tokens // t)
        for j in range(0, len(idx), rows):
            chunk = idx[j:j + rows]
            batches.append(chunk + [-1] * (rows - len(chunk)))
    return [batches[k] for k in rng.permutation(len(batches))]


def collate(examples: list[Example], rows: list[int]):
    """``tokens [B, T]`` (0-padded), ``lengths [B]``, ``starts [B]`` (empty rows: length 0)."""
    t = bucket_length(max(len(examples[i].token_ids) for i in rows if i >= 0))
    tokens = np.zeros((len(rows), t), np.int32)
    lengths = np.zeros(len(rows), np.int32)
    starts = np.zeros(len(rows), np.int32)
    for r, i in enumerate(rows):
        if i < 0:
            continue
        ex = examples[i]
        tokens[r, :len(ex.token_ids)] = ex.token_ids
        lengths[r], starts[r] = len(ex.token_ids), ex.answer_start
    return tokens, lengths, starts


# ---------------------------------------------------------------------------------------------
# the loss, training and evaluation


def toy_logits(params, config, tokens, lengths):
    """``forward(params, config, tokens, lengths, logits=True, attn_impl="xla")["logits"]``, from
    the same building blocks, with the attention in query blocks of ATTN_Q_BLOCK (the same
    function: tests/pipeline/test_toy_model.py compares the two)."""
    import jax.numpy as jnp

    from arclens.model.attention import self_attention
    from arclens.model.qwen import decoder_layer, embed, rope, unembed

    b, t = tokens.shape
    lengths = lengths.astype(jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    cos, sin = rope(positions, config, params.embed.dtype)
    x = embed(params, jnp.where(positions < lengths[:, None], tokens, 0))  # padding reads token 0, as forward

    def attend(q, k, v):
        return self_attention(q, k, v, lengths, impl="xla", q_block=ATTN_Q_BLOCK), None

    for layer in params.layers:
        x, _, _ = decoder_layer(layer, x, cos, sin, config, attend)
    return unembed(params, config, x)


def answer_nll(params, config, tokens, lengths, starts):
    """(sum of next-token NLL over the answer tokens, their count): position p-1 predicts token
    p for every p in [start, length)."""
    import jax
    import jax.numpy as jnp

    logits = toy_logits(params, config, tokens, lengths)
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    p = jnp.arange(1, tokens.shape[1])[None, :]
    mask = (p >= starts[:, None]) & (p < lengths[:, None])
    return jnp.where(mask, nll, 0.0).sum(), mask.sum()


def optimizer(steps: int, lr: float, warmup: int):
    """AdamW, gradients clipped at norm 1, linear warm-up then cosine decay to lr / 10."""
    import optax

    warmup = min(warmup, max(1, steps // 5))
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(steps, warmup + 1), end_value=lr * 0.1)
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, b2=0.99, weight_decay=0.01))


@functools.lru_cache(maxsize=4)
def _step_fn(config, steps: int, lr: float, warmup: int):
    """(optimizer, jitted step) for these settings, built once per process: runs that differ only
    in their seed (the tests' determinism check) share the compiled programs."""
    import jax
    import optax

    opt = optimizer(steps, lr, warmup)

    def loss(p, tokens, lengths, starts):
        total, count = answer_nll(p, config, tokens, lengths, starts)
        return total / jax.numpy.maximum(count, 1)

    @jax.jit
    def step(p, state, tokens, lengths, starts):
        value, grads = jax.value_and_grad(loss)(p, tokens, lengths, starts)
        updates, state = opt.update(grads, state, p)
        return optax.apply_updates(p, updates), state, value

    return opt, step


def train(params, config, examples: list[Example], *, steps: int, batch_tokens: int, lr: float, warmup: int,
          seed: int, stop=None, log=None, log_every_s: float = 10.0) -> TrainResult:
    """``steps`` AdamW steps over ``examples``; each epoch reshuffled by a generator seeded ``seed``.
    ``stop`` (a pipeline.stopping.StopRequest) ends the loop between steps."""
    import jax

    opt, step = _step_fn(config, steps, lr, warmup)
    # opt.init makes its step counters as uncommitted scalars, and the step's outputs are committed:
    # left so, the second step would compile the first shape again (a jit cache entry per placement)
    state = jax.device_put(opt.init(params), jax.tree.leaves(params)[0].sharding)
    rng = np.random.default_rng(seed)
    plan: list[list[int]] = []
    history, tokens_seen, t0, last_log = [], 0, time.perf_counter(), time.perf_counter()
    done, stopped_by = 0, None
    for done in range(steps):
        if stop is not None and stop.is_set():
            stopped_by = stop.signal_name
            break
        if not plan:
            plan = batch_plan(examples, batch_tokens, rng)
        tokens, lengths, starts = collate(examples, plan.pop())
        params, state, value = step(params, state, tokens, lengths, starts)
        value = float(value)  # waits for the step: the clock below measures work done, not dispatched
        tokens_seen += int(lengths.sum())
        now = time.perf_counter()
        if done == 0 or now - last_log >= log_every_s or done + 1 == steps:  # the first: compiled, running
            history.append({"step": done + 1, "loss": round(value, 4), "tokens": tokens_seen,
                            "seconds": round(now - t0, 1)})
            if done == 0:  # its time is mostly compiling: a rate or an ETA from it would be wrong
                t_first, tokens_first = now, tokens_seen
                pace = f"first step {now - t0:.1f} s (compiling)"
            else:
                per_step = (now - t_first) / done
                pace = (f"{(tokens_seen - tokens_first) / (now - t_first):,.0f} tokens/s  "
                        f"ETA {per_step * (steps - done - 1):.0f} s")
            if log is not None:
                log(f"step {done + 1}/{steps}  answer loss {value:.3f}  {pace}")
            last_log = now
    else:
        done = steps
    return TrainResult(params, done, stopped_by, tokens_seen, history)


def _token_nll_and_guess(params, config, tokens, lengths):
    """Per position p >= 1: the NLL of token p and the model's most likely token there."""
    import jax
    import jax.numpy as jnp

    logits = toy_logits(params, config, tokens, lengths)
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    return nll, jnp.argmax(logp, axis=-1)


_eval_jit = None


def evaluate(params, config, examples: list[Example], batch_tokens: int = 8192) -> dict:
    """Held-out report over the answer tokens of ``examples``: mean next-token cross-entropy
    (nats, pooled) of all of them, of the answer grid's cells and of the rest (shape line, row
    numbers, newlines, fences); how often the most likely token is right on cells and on the rest;
    and the cell accuracy of guessing the test input's most frequent colour everywhere."""
    global _eval_jit
    import jax

    if _eval_jit is None:  # one compiled program per shape for the whole process
        _eval_jit = jax.jit(_token_nll_and_guess, static_argnames=("config",))
    sums = dict.fromkeys(("nll_cells", "nll_rest", "right_cells", "right_rest", "mode_cells", "cells", "rest"), 0.0)
    for rows in batch_plan(examples, batch_tokens, np.random.default_rng(0)):
        tokens, lengths, _ = collate(examples, rows)
        nll, guess = (np.asarray(a) for a in _eval_jit(params, config, tokens, lengths))
        for r, i in enumerate(rows):
            if i < 0:
                continue
            ex = examples[i]
            p = np.arange(ex.answer_start, len(ex.token_ids))  # predicted positions; row index p - 1
            target = ex.token_ids[p]
            cells = ex.answer_cells[p] if ex.answer_cells is not None else np.zeros(len(p), bool)
            right = guess[r, p - 1] == target
            for name, m in (("cells", cells), ("rest", ~cells)):
                sums[name] += m.sum()
                sums[f"nll_{name}"] += nll[r, p - 1][m].sum()
                sums[f"right_{name}"] += right[m].sum()
            sums["mode_cells"] += (target[cells] == ex.test_input_mode).sum()
    n = sums["cells"] + sums["rest"]
    if n == 0:
        raise UserError("no answer tokens to evaluate")

    def ratio(a, b):
        return round(float(a / b), 4) if b else None

    return {"loss": ratio(sums["nll_cells"] + sums["nll_rest"], n), "tokens": int(n), "cells": int(sums["cells"]),
            "loss_cells": ratio(sums["nll_cells"], sums["cells"]), "loss_rest": ratio(sums["nll_rest"], sums["rest"]),
            "cell_accuracy": ratio(sums["right_cells"], sums["cells"]),
            "rest_accuracy": ratio(sums["right_rest"], sums["rest"]),
            "cell_accuracy_test_input_mode": ratio(sums["mode_cells"], sums["cells"])}


def mean_answer_loss(params, config, examples: list[Example], batch_tokens: int = 8192) -> float:
    """Mean next-token cross-entropy (nats) over every answer token of ``examples``, pooled."""
    return evaluate(params, config, examples, batch_tokens)["loss"]


