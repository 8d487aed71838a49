"""Parameter pytrees, stored einsum-ready, and the one table that names every weight.

Weights are kept in the layout the einsums want (jax-ml/jax-llm-examples style), not in
PyTorch's ``[out, in]`` Linear layout, so the forward pass never transposes or reshapes a weight:

    q   [D, Hq, hd]   k, v  [D, Hkv, hd]   o  [Hq, hd, D]
    gate, up  [D, F]  down  [F, D]         embed [V, D]   lm_head [D, V]

``layer_table(config, i)`` and ``top_table(config)`` are the one table: they map each of our
fields to its Hugging Face tensor name, how to get from that tensor to ours (a split of one
dimension into heads, then a transpose), and the logical axes that
``arclens.distributed.sharding.logical_sharding`` turns into a placement on the mesh (used by
``loading.load_params``, which places every array as it loads it).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax

from arclens.model.config import QwenConfig


@jax.tree_util.register_dataclass
@dataclass
class Layer:
    input_norm: jax.Array  # [D]
    q: jax.Array  # [D, Hq, hd]
    q_bias: jax.Array  # [Hq, hd]
    k: jax.Array  # [D, Hkv, hd]
    k_bias: jax.Array  # [Hkv, hd]
    v: jax.Array  # [D, Hkv, hd]
    v_bias: jax.Array  # [Hkv, hd]
    o: jax.Array  # [Hq, hd, D]
    post_norm: jax.Array  # [D]
    gate: jax.Array  # [D, F]
    up: jax.Array  # [D, F]
    down: jax.Array  # [F, D]


@jax.tree_util.register_dataclass
@dataclass
class Params:
    embed: jax.Array  # [V, D]
    layers: list[Layer]
    final_norm: jax.Array  # [D]
    lm_head: jax.Array | None  # [D, V]; None when tied to ``embed`` (the head is then embed.T)


@dataclass(frozen=True)
class ParamSpec:
    """How one of our arrays comes from one Hugging Face tensor.

    ``split``: (source dim, n_heads) splits that dimension into ``[n_heads, head_dim]``
    (PyTorch's ``view(..., heads, head_dim)``); then ``perm`` transposes to our layout.
    """

    hf_name: str
    hf_shape: tuple[int, ...]
    shape: tuple[int, ...]
    logical_axes: tuple[str | None, ...]
    split: tuple[int, int] | None = None
    perm: tuple[int, ...] | None = None


def layer_table(config: QwenConfig, i: int) -> dict[str, ParamSpec]:
    d, f, hd = config.hidden_size, config.intermediate_size, config.head_dim
    hq, hkv = config.num_attention_heads, config.num_key_value_heads
    p = f"model.layers.{i}."
    norm = ("embed",)

    def proj(name, heads, axis):  # Linear(D -> heads*hd): [heads*hd, D] -> [D, heads, hd]
        return ParamSpec(p + name + ".weight", (heads * hd, d), (d, heads, hd), ("embed", axis, "head_dim"),
                         split=(0, heads), perm=(2, 0, 1))

    def bias(name, heads, axis):
        return ParamSpec(p + name + ".bias", (heads * hd,), (heads, hd), (axis, "head_dim"), split=(0, heads))

    return {
        "input_norm": ParamSpec(p + "input_layernorm.weight", (d,), (d,), norm),
        "q": proj("self_attn.q_proj", hq, "q_heads"),
        "q_bias": bias("self_attn.q_proj", hq, "q_heads"),
        "k": proj("self_attn.k_proj", hkv, "kv_heads"),
        "k_bias": bias("self_attn.k_proj", hkv, "kv_heads"),
        "v": proj("self_attn.v_proj", hkv, "kv_heads"),
        "v_bias": bias("self_attn.v_proj", hkv, "kv_heads"),
        # o_proj: Linear(Hq*hd -> D), weight [D, Hq*hd] -> [Hq, hd, D]
        "o": ParamSpec(p + "self_attn.o_proj.weight", (d, hq * hd), (hq, hd, d), ("q_heads", "head_dim", "embed"),
                       split=(1, hq), perm=(1, 2, 0)),
        "post_norm": ParamSpec(p + "post_attention_layernorm.weight", (d,), (d,), norm),
        "gate": ParamSpec(p + "mlp.gate_proj.weight", (f, d), (d, f), ("embed", "mlp"), perm=(1, 0)),
        "up": ParamSpec(p + "mlp.up_proj.weight", (f, d), (d, f), ("embed", "mlp"), perm=(1, 0)),
        "down": ParamSpec(p + "mlp.down_proj.weight", (d, f), (f, d), ("mlp", "embed"), perm=(1, 0)),
    }


def top_table(config: QwenConfig) -> dict[str, ParamSpec]:
    v, d = config.vocab_size, config.hidden_size
    table = {
        "embed": ParamSpec("model.embed_tokens.weight", (v, d), (v, d), ("vocab", "embed")),
        "final_norm": ParamSpec("model.norm.weight", (d,), (d,), ("embed",)),
    }
    if not config.tie_word_embeddings:
        table["lm_head"] = ParamSpec("lm_head.weight", (v, d), (d, v), ("embed", "vocab"), perm=(1, 0))
    return table
