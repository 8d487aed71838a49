"""Greedy generation with a KV cache, batched over prompts of different lengths.

Layout of one batch (B rows, cache length S = longest prompt + max_new_tokens, rounded up):

- **prefill**: the model's own ``forward`` on the right-padded prompts returns every layer's
  post-RoPE keys and values; they go into slots ``[0, T)`` of the per-layer caches
  ``[B, S, Hkv, hd]``. The first token comes from the final-normed last-layer residual at
  ``len_i - 1`` (the head is applied to B positions, never to ``[B, T, V]``).
- **decode**: one jitted step feeds each row's last token at its own position ``pos_i`` (rows
  have different lengths: a cache slot per row), writes its k/v into slot ``pos_i`` and attends
  with an explicit per-row visibility ``s <= pos_i`` (``attention.attend_xla``) -- never a
  top-left-aligned ``is_causal``, which is wrong for one query against a longer cache.
  The cache buffers are donated, so XLA updates them in place.
- **steps run in chunks** (``chunk`` steps, in a ``lax.while_loop`` that also exits as soon as
  every row is done). Between chunks the host reads the new tokens and, when at most half the
  rows are still running, **compacts** the batch: the running rows (cache included) are gathered
  into a batch of the next power of two, so finished rows stop costing compute and only
  log2(B) batch shapes are ever compiled. Rows never refill (a new prompt would need its own
  prefill into the running cache); batches are formed from prompts sorted by length instead, so
  rows of one batch tend to finish together.
- **stopping**: EOS (any of ``eos_ids``), the closing fence of the answer's code block (a
  device-side count of ``` runs; see ``fence_tables``), or ``max_new_tokens``. The stop token
  is part of the output, as in transformers.
- **log-probabilities**: ``log_softmax`` of the float32 logits at each chosen token.
- **captures** (optional): the hooks of SPEC section 1 at the position that produced each
  generated token (the last prompt token for the first one, then each fed token) -- the state
  of the model while it writes that token.
- **edits** (optional, model/edits.py): applied in the prefill and at every decode step, so the
  cache holds the edited model's keys and values (as transformers with a replacement forward
  hook). A generated token is part of the answer (``answer()`` selects it) and no known grid cell.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from arclens.model import qwen
from arclens.model.attention import attend_xla
from arclens.model.config import QwenConfig
from arclens.model.edits import EditRunner, PromptRoles, TokenRoles, batch_roles, normalize_edits
from arclens.model.hooks import HOOK_KINDS, Hook
from arclens.model.params import Params

STOP_EOS, STOP_FENCE, STOP_LENGTH = "eos", "fence", "length"
FENCE = "```"


@dataclass
class Generation:
    """One prompt's output."""

    token_ids: np.ndarray  # int32 [n]; includes the stop token (EOS or the fence's token)
    logprobs: np.ndarray  # float32 [n]; log p(token | everything before it)
    stop_reason: str  # "eos" | "fence" | "length"
    positions: np.ndarray  # int32 [n]: position that produced each token (prompt_len - 1 + k)
    captures: dict[str, np.ndarray] = field(default_factory=dict)  # hook -> [n, D]


@dataclass(frozen=True)
class StopRule:
    """How rows finish: any of ``eos_ids``, or (with the int32 ``[V, 3]`` tables of
    ``fence_tables``) once ``generate``'s ``fences_needed`` fences have been written."""

    eos_ids: tuple[int, ...] = ()
    fence_count: np.ndarray | None = None
    fence_state: np.ndarray | None = None


def fence_tables(token_texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per-token tables for counting ``` on the device.

    Fences are counted as ``str.count("```")`` counts them on the whole generated text: a run of
    n backticks holds n // 3 fences. Tokens may split a run ("``" + "`"), so the state carried
    from token to token is the current run length mod 3. For a token t and incoming state s,
    ``count[t, s]`` is how many fences complete inside t and ``state[t, s]`` the outgoing state.
    """
    n = len(token_texts)
    count = np.zeros((n, 3), np.int32)
    state = np.zeros((n, 3), np.int32)
    for t, text in enumerate(token_texts):
        if "`" not in text:
            # Any other character breaks a run; an empty text (a special token) leaves it alone.
            state[t] = 0 if text else np.arange(3)
            continue
        for s in range(3):
            run, c = s, 0
            for ch in text:
                run = run + 1 if ch == "`" else 0
                c += run > 0 and run % 3 == 0
            count[t, s], state[t, s] = c, run % 3
    return count, state


def tokenizer_fence_tables(tokenizer, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``fence_tables`` over the model's vocabulary (ids past the tokenizer's are never fences)."""
    n = min(len(tokenizer), vocab_size)
    texts = [tokenizer.decode([i]) for i in range(n)] + ["x"] * (vocab_size - n)
    return fence_tables(texts)


# ---------------------------------------------------------------------------------------------
# The decode step: one token per row against the cache.


def _decode_layers(params: Params, config: QwenConfig, caches, tokens, pos, hooks: tuple[Hook, ...],
                   edits=None, n_train=None, answer_start=None):
    """Feed ``tokens`` [B] at positions ``pos`` [B] through the model package's own decoder
    layers. Returns (float32 logits [B, V], updated caches, {hook name: [B, D]})."""
    want = {(h.layer, h.kind): h.name for h in hooks}
    rows = jnp.arange(tokens.shape[0])
    qpos = pos[:, None]  # [B, 1]
    cos, sin = qwen.rope(qpos, config, params.embed.dtype)
    x = qwen.embed(params, tokens[:, None])  # [B, 1, D]
    runner = None
    if edits:  # a generated token: part of the answer, not a known grid cell
        off = jnp.full(qpos.shape, -1, jnp.int32)
        runner = EditRunner(edits, qpos, TokenRoles(off, off, off, n_train, answer_start))
    caps, new_caches = {}, []
    for i, layer in enumerate(params.layers):
        ck, cv = caches[i]

        def attend(q, k, v, ck=ck, cv=cv):
            # Each row writes its own slot, then sees exactly slots [0, pos_i] of its cache.
            ck = ck.at[rows, pos].set(k[:, 0].astype(ck.dtype))
            cv = cv.at[rows, pos].set(v[:, 0].astype(cv.dtype))
            return attend_xla(q, ck, cv, qpos, pos + 1), (ck, cv)

        x, acts, cache = qwen.decoder_layer(layer, x, cos, sin, config, attend, runner.tap(i) if runner else None)
        new_caches.append(cache)
        for kind in HOOK_KINDS:
            if (i, kind) in want:
                caps[want[i, kind]] = acts[kind][:, 0]
    logits = qwen.unembed(params, config, x[:, 0], dtype=jnp.float32)
    return logits, new_caches, caps


@jax.tree_util.register_dataclass
@dataclass
class _State:
    """Everything the decode loop carries, per row. ``tokens`` is the last generated token,
    already recorded but not yet fed; it will sit at position ``pos``."""

    caches: list  # [(k, v)] per layer, [B, S, Hkv, hd]
    tokens: jax.Array  # int32 [B]
    pos: jax.Array  # int32 [B]
    n_gen: jax.Array  # int32 [B] tokens generated so far (including ``tokens``)
    done: jax.Array  # bool [B]
    fence_state: jax.Array  # int32 [B] current ``` run length mod 3
    fences_left: jax.Array  # int32 [B] fences still to see before the answer ends
    stop: jax.Array  # int32 [B] 0 running, 1 eos, 2 fence, 3 length
    n_train: jax.Array  # int32 [B] roles for edits' token filters (model/edits.py TokenRoles)
    answer_start: jax.Array  # int32 [B]


_STOP_NAMES = {1: STOP_EOS, 2: STOP_FENCE, 3: STOP_LENGTH}


def _choose(logits, state_fence, fences_left, n_gen, eos, fence_count, fence_next, max_new):
    """Greedy token, its log-probability, and the stop bookkeeping for it."""
    tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    lp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), tok[:, None], axis=-1)[:, 0]
    is_eos = jnp.isin(tok, eos) if eos.size else jnp.zeros_like(tok, dtype=bool)
    if fence_count is not None:
        fences_left = fences_left - fence_count[tok, state_fence]
        state_fence = fence_next[tok, state_fence]
        is_fence = fences_left <= 0
    else:
        is_fence = jnp.zeros_like(is_eos)
    n_gen = n_gen + 1
    stop = jnp.where(is_eos, 1, jnp.where(is_fence, 2, jnp.where(n_gen >= max_new, 3, 0))).astype(jnp.int32)
    return tok, lp, state_fence, fences_left, n_gen, stop


def _step(params, config, hooks, max_new, eos, fence_count, fence_next, st: _State, edits=None):
    """One decode step for every row; finished rows compute but change nothing."""
    logits, caches, caps = _decode_layers(params, config, st.caches, st.tokens, st.pos, hooks, edits, st.n_train,
                                          st.answer_start)
    tok, lp, fs, fl, n_gen, stop = _choose(
        logits, st.fence_state, st.fences_left, st.n_gen, eos, fence_count, fence_next, max_new
    )
    live = ~st.done
    new = _State(
        caches=caches,
        tokens=jnp.where(live, tok, st.tokens),
        pos=jnp.where(live, st.pos + 1, st.pos),  # a done row keeps rewriting its own last slot
        n_gen=jnp.where(live, n_gen, st.n_gen),
        done=st.done | (live & (stop > 0)),
        fence_state=jnp.where(live, fs, st.fence_state),
        fences_left=jnp.where(live, fl, st.fences_left),
        stop=jnp.where(live, stop, st.stop),
        n_train=st.n_train,
        answer_start=st.answer_start,
    )
    return new, tok, lp, live, caps


@partial(jax.jit, static_argnames=("config", "hooks", "chunk"), donate_argnums=(1,))
def _decode_chunk(params, st: _State, eos, fence_count, fence_next, max_new, edits=None, *, config, hooks, chunk):
    """Up to ``chunk`` steps in a while_loop that stops early once every row is done.
    Returns (state, tokens [B, chunk], logprobs [B, chunk], live [B, chunk], captures, steps)."""
    b = st.tokens.shape[0]
    d = config.hidden_size
    dtype = params.embed.dtype
    out_tok = jnp.zeros((b, chunk), jnp.int32)
    out_lp = jnp.zeros((b, chunk), jnp.float32)
    out_live = jnp.zeros((b, chunk), bool)
    out_caps = {h.name: jnp.zeros((b, chunk, d), dtype) for h in hooks}

    def cond(carry):
        i, st = carry[0], carry[1]
        return (i < chunk) & ~jnp.all(st.done)

    def body(carry):
        i, st, out_tok, out_lp, out_live, out_caps = carry
        st, tok, lp, live, caps = _step(params, config, hooks, max_new, eos, fence_count, fence_next, st, edits)
        out_tok = out_tok.at[:, i].set(tok)
        out_lp = out_lp.at[:, i].set(lp)
        out_live = out_live.at[:, i].set(live)
        out_caps = {k: v.at[:, i].set(caps[k].astype(v.dtype)) for k, v in out_caps.items()}
        return i + 1, st, out_tok, out_lp, out_live, out_caps

    i, st, out_tok, out_lp, out_live, out_caps = jax.lax.while_loop(
        cond, body, (jnp.int32(0), st, out_tok, out_lp, out_live, out_caps)
    )
    return st, out_tok, out_lp, out_live, out_caps, i


@partial(jax.jit, static_argnames=())
def _gather_rows(st: _State, idx):
    return jax.tree.map(lambda a: a[idx], st)


# ---------------------------------------------------------------------------------------------
# Prefill: the model package's forward pass, asked for keys/values.


def _prefill(params, config, tokens, lengths, hooks, cache_len, edits=None, roles=None):
    """Run the prompts through ``qwen.forward`` (asked for every layer's k, v), build the
    caches, and return (caches, float32 logits [B, V] at len-1, {hook: [B, D]} at len-1)."""
    last = Hook(config.num_hidden_layers - 1, "resid_post")
    out = qwen.forward(params, config, tokens, lengths, hooks=tuple(sorted(set(hooks) | {last})), return_kv=True,
                       edits=edits, roles=roles)
    b, t = tokens.shape
    rows, at = jnp.arange(b), lengths - 1
    # Only B positions go through the head: [B, T, V] logits would not fit for real vocabularies.
    logits = qwen.unembed(params, config, out[last.name][rows, at], dtype=jnp.float32)
    caps = {h.name: out[h.name][rows, at] for h in hooks}
    pad = ((0, 0), (0, cache_len - t), (0, 0), (0, 0))
    caches = [(jnp.pad(k, pad), jnp.pad(v, pad)) for k, v in out["kv"]]
    return caches, logits, caps


# ---------------------------------------------------------------------------------------------
# The driver.


def _bucket(n: int, minimum: int) -> int:
    """Round up to one of four sizes per octave (at most ~19% padding, at least ``minimum``),
    so a run over prompts of every length compiles a few dozen shapes, not one per length."""
    if n <= minimum:
        return minimum
    step = max(minimum, 1 << max(0, n.bit_length() - 3))
    return -(-n // step) * step


def _pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, n))))


@dataclass
class GenerateStats:
    prefill_s: float = 0.0
    decode_s: float = 0.0
    new_tokens: int = 0
    row_steps: int = 0  # rows x steps actually computed (padding and finished rows included)
    batches: int = 0
    compactions: int = 0


def generate(
    params: Params,
    config: QwenConfig,
    prompts: Sequence[np.ndarray],
    *,
    max_new_tokens: int,
    batch_size: int = 16,
    stop: StopRule = StopRule(),
    fences_needed: Sequence[int] | None = None,
    hooks: tuple[Hook, ...] = (),
    chunk: int = 32,
    pad_id: int = 0,
    length_bucket: int = 64,
    compact: bool = True,
    stats: GenerateStats | None = None,
    edits=None,
    roles: Sequence[PromptRoles | None] | None = None,
) -> Iterator[tuple[int, Generation]]:
    """Greedy-generate for every prompt; yields ``(index into prompts, Generation)`` as batches
    finish (prompts are batched longest first, so the order differs from ``prompts``).

    ``fences_needed[i]``: how many ``` runs end prompt i's answer (2 when the answer opens and
    closes its own code block); used only when ``stop`` has fence tables.
    ``edits``: ``{hook: Edit}`` applied in the prefill and every decode step (model/edits.py);
    ``roles[i]``: prompt i's token roles for edits that filter by them (default: no cells, and the
    answer is what is generated).
    """
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
    stats = stats if stats is not None else GenerateStats()
    hooks = tuple(sorted(set(hooks)))
    edits = normalize_edits(edits, config.n_layers) or None
    if roles is not None and len(roles) != len(prompts):
        raise ValueError(f"roles: {len(roles)} entries for {len(prompts)} prompts")
    eos = jnp.asarray(np.asarray(stop.eos_ids, np.int32).reshape(-1))
    use_fence = stop.fence_count is not None
    fc = jnp.asarray(stop.fence_count) if use_fence else None
    fn = jnp.asarray(stop.fence_state) if use_fence else None
    needed = np.full(len(prompts), 2, np.int32) if fences_needed is None else np.asarray(fences_needed, np.int32)
    lengths_all = np.array([len(p) for p in prompts])
    if (lengths_all < 1).any():
        raise ValueError("every prompt needs at least one token")
    order = np.argsort(-lengths_all, kind="stable")
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        yield from _generate_batch(
            params, config, [prompts[i] for i in idx], idx, needed[idx], max_new_tokens, batch_size,
            eos, fc, fn, hooks, chunk, pad_id, length_bucket, compact, stats,
            edits, None if roles is None else [roles[i] for i in idx],
        )


def _generate_batch(params, config, prompts, idx, needed, max_new, batch_size, eos, fc, fn, hooks, chunk,
                    pad_id, length_bucket, compact, stats, edits=None, roles=None):
    n = len(prompts)
    # A short (last) batch is padded to a power of two: the shapes compaction compiles anyway.
    b = min(batch_size, _pow2(n))
    lens = np.array([len(p) for p in prompts], np.int32)
    t = _bucket(int(lens.max()), length_bucket)
    cache_len = _bucket(t + max_new, length_bucket)
    tokens = np.full((b, t), pad_id, np.int32)
    for r, p in enumerate(prompts):
        tokens[r, : len(p)] = p
    lengths = np.ones(b, np.int32)
    lengths[:n] = lens
    stats.batches += 1

    t0 = time.perf_counter()
    left0 = np.pad(needed, (0, b - n), constant_values=2).astype(np.int32)
    padding = np.arange(b) >= n
    batch_roles_ = None
    if edits:  # without roles: no cells, and the answer starts after the prompt
        given = roles if roles is not None else [None] * n
        batch_roles_ = batch_roles([
            r if r is not None else PromptRoles(np.full(len(p), -1), np.full(len(p), -1), np.full(len(p), -1), 0,
                                                len(p))
            for r, p in zip(given, prompts, strict=True)], b, t)
    st, tok, lp, pre_caps = _start(
        params, jnp.asarray(tokens), jnp.asarray(lengths), eos, fc, fn, jnp.asarray(left0), jnp.int32(max_new),
        jnp.asarray(padding), edits, batch_roles_, config=config, hooks=hooks, cache_len=cache_len,
    )
    # Host-side record per original row: lists of tokens / logprobs / captures.
    out_tok = [[int(x)] for x in np.asarray(tok)[:n]]
    out_lp = [[float(x)] for x in np.asarray(lp)[:n]]
    out_caps = [{k: [np.asarray(v[r])] for k, v in pre_caps.items()} for r in range(n)]
    # Stop codes per original row, refreshed after every chunk: compaction drops finished rows.
    stop_codes = np.zeros(b, np.int32)
    stop_codes[:] = np.asarray(st.stop)
    stats.prefill_s += time.perf_counter() - t0

    t0 = time.perf_counter()
    max_new_arr = jnp.int32(max_new)  # traced, so another --max-new-tokens reuses the compiled step
    rows = np.arange(b)  # original row (or >= n for padding) held by each slot of the batch
    while True:
        done = np.asarray(st.done)
        if done.all():
            break
        live_slots = np.flatnonzero(~done)
        if compact and len(live_slots) <= len(rows) // 2:
            new_b = _pow2(len(live_slots))
            # Fill the spare slots with a finished row: it is already done, so it never writes output.
            spare = np.flatnonzero(done)[: new_b - len(live_slots)]
            keep = np.concatenate([live_slots, spare]).astype(np.int32)
            st = _gather_rows(st, jnp.asarray(keep))
            rows = rows[keep]
            stats.compactions += 1
        st, ct, clp, clive, ccaps, steps = _decode_chunk(
            params, st, eos, fc, fn, max_new_arr, edits, config=config, hooks=hooks, chunk=chunk
        )
        steps = int(steps)
        ct, clp, clive = np.asarray(ct)[:, :steps], np.asarray(clp)[:, :steps], np.asarray(clive)[:, :steps]
        ccaps = {k: np.asarray(v)[:, :steps] for k, v in ccaps.items()}
        stats.row_steps += len(rows) * steps
        for slot, r in enumerate(rows):
            if r >= n:
                continue
            live = clive[slot]
            out_tok[r].extend(int(x) for x in ct[slot][live])
            out_lp[r].extend(float(x) for x in clp[slot][live])
            for k, v in ccaps.items():
                out_caps[r][k].extend(v[slot][live])
        stop_codes[rows] = np.asarray(st.stop)
    stats.decode_s += time.perf_counter() - t0

    for r in range(n):
        ids = np.asarray(out_tok[r], np.int32)
        stats.new_tokens += len(ids)
        caps = {k: np.stack(v) for k, v in out_caps[r].items()}
        yield int(idx[r]), Generation(
            token_ids=ids,
            logprobs=np.asarray(out_lp[r], np.float32),
            stop_reason=_STOP_NAMES[int(stop_codes[r])],
            positions=np.arange(lens[r] - 1, lens[r] - 1 + len(ids), dtype=np.int32),
            captures=caps,
        )


@partial(jax.jit, static_argnames=("config", "hooks", "cache_len"))
def _start(params, tokens, lengths, eos, fc, fn, fences_left, max_new, padding, edits=None, roles=None, *, config,
           hooks, cache_len):
    """Prefill and the first token, in one compiled call: the decode state, first tokens,
    their log-probabilities and the captures at each prompt's last position."""
    caches, logits, caps = _prefill(params, config, tokens, lengths, hooks, cache_len, edits, roles)
    b = tokens.shape[0]
    zero = jnp.zeros(b, jnp.int32)
    tok, lp, fs, fl, n_gen, stop = _choose(logits, zero, fences_left, zero, eos, fc, fn, max_new)
    n_train = zero if roles is None else roles.n_train
    answer_start = lengths if roles is None else roles.answer_start
    st = _State(caches=caches, tokens=tok, pos=lengths, n_gen=n_gen, done=(stop > 0) | padding,
                fence_state=fs, fences_left=fl, stop=stop, n_train=n_train, answer_start=answer_start)
    return st, tok, lp, caps
