"""Qwen2 / Qwen2.5 decoder in plain JAX, with named capture points.

Plain functions over the ``Params`` pytree (model/params.py). Every numerical detail follows
transformers' ``modeling_qwen2.py`` (checked in docs/CORRECTNESS.md):

- RMSNorm normalises in float32, casts back to the input dtype, THEN multiplies by the weight;
- RoPE is rotate-half (two halves, not interleaved), ``inv_freq = 1/theta^(arange(0,d,2)/d)``,
  cos/sin computed in float32 and cast to the compute dtype; q/k biases are added before RoPE;
- the attention scale is ``head_dim**-0.5``; GQA query head h reads KV head h // (Hq/Hkv);
- the MLP is ``down(silu(gate(x)) * up(x))``;
- the final norm is applied only on the way to the logits, never to a capture.

The compute dtype is the dtype of the parameters (``load_params(..., dtype=...)``).
The layer loop is an unrolled Python loop: captures at arbitrary layers stay trivial, and the
loop stops after the deepest layer anyone asked for. Edits (model/edits.py) replace values at the
same points: ``decoder_layer`` hands each hook's value to a ``tap`` and goes on with what it returns.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from arclens.errors import UserError
from arclens.model.attention import resolve_impl, self_attention
from arclens.model.config import QwenConfig
from arclens.model.edits import Edit, EditRunner, TokenRoles, no_roles, normalize_edits
from arclens.model.hooks import HOOK_KINDS, Hook, parse_hooks
from arclens.model.params import Layer, Params

# ---------------------------------------------------------------------------------------------
# Building blocks (also used by model/generate.py with a KV cache)


def embed(params: Params, tokens: jax.Array) -> jax.Array:
    """``[B, T]`` int32 -> ``[B, T, D]`` in the compute dtype (``resid_pre`` of layer 0)."""
    return jnp.take(params.embed, tokens, axis=0)


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    dtype = x.dtype
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + jnp.float32(eps))
    return weight.astype(dtype) * xf.astype(dtype)


def rope_inv_freq(head_dim: int, theta: float) -> np.ndarray:
    # float32 on the host, the same arithmetic as transformers' (a float32 pow); a constant.
    exps = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    return (np.float32(1.0) / (np.float32(theta) ** exps)).astype(np.float32)


def rope(positions: jax.Array, config: QwenConfig, dtype) -> tuple[jax.Array, jax.Array]:
    """cos, sin ``[B, T, head_dim]`` for integer ``positions [B, T]``: computed in float32, then
    cast to the compute dtype (as transformers does)."""
    inv_freq = jnp.asarray(rope_inv_freq(config.head_dim, config.rope_theta))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """``x [B, T, H, hd]``; rotate-half RoPE in x's dtype."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


def attention_qkv(layer: Layer, x: jax.Array, cos: jax.Array, sin: jax.Array):
    """Normalised input ``x [B, T, D]`` -> q ``[B, T, Hq, hd]``, k, v ``[B, T, Hkv, hd]``;
    biases added, then RoPE on q and k. These k, v are what a KV cache stores."""
    q = jnp.einsum("btd,dnh->btnh", x, layer.q) + layer.q_bias
    k = jnp.einsum("btd,dnh->btnh", x, layer.k) + layer.k_bias
    v = jnp.einsum("btd,dnh->btnh", x, layer.v) + layer.v_bias
    return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v


def attention_out(layer: Layer, attn: jax.Array) -> jax.Array:
    """``o_proj``: ``[B, T, Hq, hd]`` -> ``[B, T, D]`` (``attn_out``)."""
    return jnp.einsum("btnh,nhd->btd", attn, layer.o)


def mlp(layer: Layer, x: jax.Array) -> jax.Array:
    """``down(silu(gate(x)) * up(x))`` on the normalised input; silu in float32 like torch's
    bf16 kernel, rounded once."""
    gate = jnp.einsum("btd,df->btf", x, layer.gate)
    up = jnp.einsum("btd,df->btf", x, layer.up)
    act = jax.nn.silu(gate.astype(jnp.float32)).astype(x.dtype)
    return jnp.einsum("btf,fd->btd", act * up, layer.down)


# attend(q, k, v) -> (attention output [B, T, Hq, hd], anything the caller wants back, e.g. a cache)
AttendFn = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, object]]


# tap(kind, value) -> the value the layer continues with (model/edits.py applies edits through it)
TapFn = Callable[[str, jax.Array], jax.Array]


def decoder_layer(layer: Layer, x: jax.Array, cos: jax.Array, sin: jax.Array, config: QwenConfig,
                  attend: AttendFn, tap: TapFn | None = None):
    """One Qwen2 decoder layer. Returns ``(resid_post, acts, aux)`` where ``acts`` maps every
    hook kind (``resid_pre`` ... ``resid_post``) to its ``[B, T, D]`` value and ``aux`` is what
    ``attend`` returned next to the attention output (prefill: the layer's k, v; decode: an
    updated cache). ``tap``, when given, is called at each hook kind in order and returns the
    value the layer goes on with (an edit point); ``acts`` holds those returned values."""
    if tap is not None:
        x = tap("resid_pre", x)
    h = rms_norm(x, layer.input_norm, config.rms_norm_eps)
    q, k, v = attention_qkv(layer, h, cos, sin)
    attn, aux = attend(q, k, v)
    attn_out = attention_out(layer, attn)
    if tap is not None:
        attn_out = tap("attn_out", attn_out)
    resid_mid = x + attn_out
    if tap is not None:
        resid_mid = tap("resid_mid", resid_mid)
    mlp_out = mlp(layer, rms_norm(resid_mid, layer.post_norm, config.rms_norm_eps))
    if tap is not None:
        mlp_out = tap("mlp_out", mlp_out)
    resid_post = resid_mid + mlp_out
    if tap is not None:
        resid_post = tap("resid_post", resid_post)
    acts = {"resid_pre": x, "attn_out": attn_out, "resid_mid": resid_mid, "mlp_out": mlp_out,
            "resid_post": resid_post}
    return resid_post, acts, aux


def unembed(params: Params, config: QwenConfig, x: jax.Array, dtype=None) -> jax.Array:
    """Final norm + LM head: ``[..., D]`` -> ``[..., V]`` logits. ``dtype`` (e.g. float32) sets
    the accumulation/output type; default the compute dtype, as transformers does."""
    h = rms_norm(x, params.final_norm, config.rms_norm_eps)
    out_dtype = h.dtype if dtype is None else dtype
    if params.lm_head is None:  # tied: the head is the embedding matrix
        return jnp.einsum("...d,vd->...v", h, params.embed, preferred_element_type=out_dtype)
    return jnp.einsum("...d,dv->...v", h, params.lm_head, preferred_element_type=out_dtype)


# ---------------------------------------------------------------------------------------------
# The forward pass


def _as_hooks(hooks, n_layers: int) -> tuple[Hook, ...]:
    for h in hooks:
        if isinstance(h, Hook) and not (0 <= h.layer < n_layers and h.kind in HOOK_KINDS):
            raise UserError(f"hook {h.name!r} does not exist in a model with {n_layers} layers")
    return parse_hooks([h if isinstance(h, str) else h.name for h in hooks], n_layers)


def forward(
    params: Params,
    config: QwenConfig,
    tokens: jax.Array,
    lengths: jax.Array | None = None,
    *,
    hooks: Sequence[Hook | str] = (),
    logits: bool = False,
    attn_impl: str = "auto",
    return_kv: bool = False,
    edits: Mapping[str | Hook, Edit] | None = None,
    roles: TokenRoles | None = None,
) -> dict:
    """Run a right-padded batch and return the requested captures.

    ``tokens`` int32 ``[B, T]``; ``lengths`` int32 ``[B]`` (real tokens of each row, the rest is
    padding; default: all ``T``). Returns ``{hook.name: [B, T, D]}`` in the compute dtype, plus
    ``"logits": [B, T, V]`` when ``logits``, plus ``"kv": ((k, v), ...)`` one pair per layer
    (``[B, T, Hkv, hd]``, after RoPE) when ``return_kv``. Values at padded positions are
    meaningless; real tokens never see padding. Layers past the deepest requested hook are not
    computed unless logits or the KV pairs are asked for (an edit deeper than every output cannot
    change any of them, so it is not applied). Static for ``jax.jit``: config, hooks, logits,
    attn_impl, return_kv.

    ``edits``: ``{hook: Edit}`` (model/edits.py), applied where the model computes each hook; a
    capture at an edited hook reports the edited value. ``roles``: the batch's ARC token roles
    for edits that filter by them (default: no grid cells, and no given token is the answer).
    Both are pytrees of traced arrays: new weights of the same shapes reuse the compiled program.
    """
    hooks = _as_hooks(hooks, config.n_layers)
    edits = normalize_edits(edits, config.n_layers)
    b, t = tokens.shape
    if lengths is None:
        lengths = jnp.full((b,), t, jnp.int32)
    lengths = lengths.astype(jnp.int32)
    dtype = params.embed.dtype
    impl = resolve_impl(attn_impl, dtype, config.head_dim)

    n_run = config.n_layers if (logits or return_kv) else max((h.layer + 1 for h in hooks), default=0)
    wanted: dict[int, list[str]] = {}
    for h in hooks:
        wanted.setdefault(h.layer, []).append(h.kind)

    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    cos, sin = rope(positions, config, dtype)
    # Whatever id fills the padding (-1, vocab_size...), embed token 0 there: jnp.take would give
    # NaN for an out-of-range id, and 0 * NaN in the attention would reach real tokens.
    tokens = jnp.where(positions < lengths[:, None], tokens, 0)
    runner = None
    if edits:
        runner = EditRunner(edits, positions, roles if roles is not None else no_roles(b, t, lengths))

    def attend(q, k, v):
        return self_attention(q, k, v, lengths, impl=impl), (k, v)

    out: dict = {}
    kv = []
    x = embed(params, tokens)
    for i in range(n_run):
        tap = runner.tap(i) if runner else None
        x, acts, layer_kv = decoder_layer(params.layers[i], x, cos, sin, config, attend, tap)
        for kind in wanted.get(i, ()):
            out[Hook(i, kind).name] = acts[kind]
        kv.append(layer_kv)
    if logits:
        out["logits"] = unembed(params, config, x)
    if return_kv:
        out["kv"] = tuple(kv)
    return out


_forward_jit = jax.jit(forward, static_argnames=("config", "hooks", "logits", "attn_impl", "return_kv"))


def forward_jit(params: Params, config: QwenConfig, tokens, lengths=None, *, hooks: Sequence[Hook | str] = (),
                logits: bool = False, attn_impl: str = "auto", return_kv: bool = False,
                edits: Mapping[str | Hook, Edit] | None = None, roles: TokenRoles | None = None) -> dict:
    """``jax.jit`` of ``forward``; hooks may be any sequence of Hooks or names (normalised to one
    sorted tuple first, so equal requests share one compiled program), edits any mapping of hooks
    or names to Edits (their params are traced arguments)."""
    return _forward_jit(params, config, tokens, lengths, hooks=_as_hooks(tuple(hooks), config.n_layers),
                        logits=logits, attn_impl=attn_impl, return_kv=return_kv,
                        edits=normalize_edits(edits, config.n_layers) or None, roles=roles)
