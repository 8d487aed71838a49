"""Qwen2 / Qwen2.5 configuration, read from a Hugging Face ``config.json``.

Only what our forward pass implements is accepted. Anything that would silently change the
numbers (sliding-window layers, scaled RoPE, another activation, another architecture) is refused
with a UserError rather than ignored, because a wrong activation is worse than no activation.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from arclens.errors import UserError

SUPPORTED_ARCHITECTURES = ("Qwen2ForCausalLM",)
CHECKPOINT_DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class QwenConfig:
    """The numbers that define a Qwen2 decoder. Field names follow Hugging Face's config.json.

    Frozen and hashable, so it can be a static argument of ``jax.jit``.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 32768
    dtype: str = "bfloat16"  # the checkpoint's dtype; the compute dtype is chosen at load time

    # Short names used throughout the model code.
    @property
    def n_layers(self) -> int:
        return self.num_hidden_layers

    @property
    def d_model(self) -> int:
        return self.hidden_size

    @property
    def n_heads(self) -> int:
        return self.num_attention_heads

    @property
    def n_kv_heads(self) -> int:
        return self.num_key_value_heads

    @property
    def q_per_kv(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    def to_json(self) -> dict:
        """Plain dict with Hugging Face's field names (for the activation store's metadata)."""
        return asdict(self)

    @classmethod
    def from_hf_dict(cls, d: dict, source: str = "config.json") -> QwenConfig:
        """Validate a parsed config.json; ``source`` names it in error messages."""
        return _from_hf_dict(d, source)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> QwenConfig:
        """Read ``<path>/config.json`` (``path`` may also be the file itself)."""
        p = Path(path)
        f = p / "config.json" if p.is_dir() else p
        if not f.is_file():
            if not p.exists():
                raise UserError(f"{p}: no such model directory")
            raise UserError(f"{p}: no config.json; expected a Hugging Face model directory")
        try:
            d = json.loads(f.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"{f}: cannot read model config ({e})") from None
        if not isinstance(d, dict):
            raise UserError(f"{f}: expected a JSON object")
        return _from_hf_dict(d, str(f))

    @classmethod
    def preset(cls, name: str) -> QwenConfig:
        """The real Qwen2.5 shapes: ``0.5b``, ``1.5b``, ``3b``, ``7b``."""
        key = name.lower().removeprefix("qwen2.5-")
        if key not in PRESETS:
            raise UserError(f"model preset {name!r} is not one of {', '.join(PRESETS)}")
        return PRESETS[key]


def _from_hf_dict(d: dict, src: str) -> QwenConfig:
    def need(key, typ=int):
        if key not in d or d[key] is None:
            raise UserError(f"{src}: missing {key!r}; expected a Qwen2 config.json")
        v = d[key]
        if typ is int and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            raise UserError(f"{src}: {key}={v!r}; expected a positive integer")
        if typ is float and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0):
            raise UserError(f"{src}: {key}={v!r}; expected a positive number")
        return typ(v)

    model_type = d.get("model_type")
    archs = d.get("architectures") or []
    if model_type != "qwen2":
        raise UserError(
            f"{src}: model_type={model_type!r} is not supported; arclens implements Qwen2/Qwen2.5 "
            "(model_type 'qwen2', Qwen2ForCausalLM) only"
        )
    if archs and not any(a in SUPPORTED_ARCHITECTURES for a in archs):
        raise UserError(f"{src}: architectures={archs} is not supported; expected {SUPPORTED_ARCHITECTURES[0]}")
    act = d.get("hidden_act", "silu")
    if act != "silu":
        raise UserError(f"{src}: hidden_act={act!r} is not supported; Qwen2 uses 'silu'")

    n_layers = need("num_hidden_layers")
    # Sliding-window attention changes the numbers of every layer it applies to; refuse it.
    if d.get("use_sliding_window"):
        raise UserError(
            f"{src}: use_sliding_window=true is not supported; arclens implements full causal attention only"
        )
    layer_types = d.get("layer_types")
    if layer_types is not None:
        other = sorted({t for t in layer_types if t != "full_attention"})
        if other:
            raise UserError(f"{src}: layer_types {other} are not supported; only 'full_attention' is implemented")

    rope_theta, rope_type = _rope(d, src)
    if rope_type != "default":
        raise UserError(
            f"{src}: rope type {rope_type!r} (rope scaling) is not supported; only the default RoPE is implemented"
        )

    hidden = need("hidden_size")
    n_heads = need("num_attention_heads")
    n_kv = d.get("num_key_value_heads")
    n_kv = n_heads if n_kv is None else need("num_key_value_heads")
    if n_heads % n_kv:
        raise UserError(
            f"{src}: num_attention_heads={n_heads} is not a multiple of num_key_value_heads={n_kv}"
        )
    if d.get("head_dim") is not None:
        head_dim = need("head_dim")
    else:
        if hidden % n_heads:
            raise UserError(
                f"{src}: hidden_size={hidden} is not divisible by num_attention_heads={n_heads} and no head_dim is given"
            )
        head_dim = hidden // n_heads
    if head_dim % 2:
        raise UserError(f"{src}: head_dim={head_dim} must be even for rotary embeddings")

    dtype = d.get("dtype") or d.get("torch_dtype") or "float32"
    if dtype not in CHECKPOINT_DTYPES:
        raise UserError(f"{src}: dtype={dtype!r}; expected one of {', '.join(CHECKPOINT_DTYPES)}")

    return QwenConfig(
        vocab_size=need("vocab_size"),
        hidden_size=hidden,
        intermediate_size=need("intermediate_size"),
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv,
        head_dim=head_dim,
        rope_theta=rope_theta,
        rms_norm_eps=need("rms_norm_eps", float) if "rms_norm_eps" in d else 1e-6,
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        max_position_embeddings=int(d.get("max_position_embeddings") or 32768),
        dtype=dtype,
    )


def _rope(d: dict, src: str) -> tuple[float, str]:
    """(theta, rope type). Qwen2.5's own files keep ``rope_theta`` at the top level;
    transformers 5.x writes ``rope_parameters: {rope_theta, rope_type}``. ``rope_scaling`` is the
    4.x name for the non-default types."""
    params = d.get("rope_parameters")
    scaling = d.get("rope_scaling")
    if params is not None and not isinstance(params, dict):
        raise UserError(f"{src}: rope_parameters={params!r}; expected an object")
    if scaling is not None and not isinstance(scaling, dict):
        raise UserError(f"{src}: rope_scaling={scaling!r}; expected an object or null")
    rope_type = "default"
    for block in (scaling, params):
        if block:
            t = block.get("rope_type", block.get("type", "default"))
            if t != "default":
                rope_type = t
    theta = d.get("rope_theta")
    if theta is None and params:
        theta = params.get("rope_theta")
    if theta is None:
        theta = 10000.0  # transformers' Qwen2 default when neither place has it
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or theta <= 0:
        raise UserError(f"{src}: rope_theta={theta!r}; expected a positive number")
    return float(theta), rope_type


def _preset(hidden, layers, heads, kv, inter, vocab, tied) -> QwenConfig:
    return QwenConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=hidden // heads,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tied,
        max_position_embeddings=32768,
        dtype="bfloat16",
    )


# Qwen2.5 base models (NOTES.md, checked against their config.json files).
PRESETS = {
    "0.5b": _preset(896, 24, 14, 2, 4864, 151936, True),
    "1.5b": _preset(1536, 28, 12, 2, 8960, 151936, True),
    "3b": _preset(2048, 36, 16, 2, 11008, 151936, True),
    "7b": _preset(3584, 28, 28, 4, 18944, 152064, False),
}
