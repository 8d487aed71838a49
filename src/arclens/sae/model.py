"""A sparse autoencoder (or transcoder) as a pytree, and its encode/decode as pure functions.

The weights are the pytree's leaves and the configuration is static metadata, so
``jax.jit(encode)(sae, x)`` compiles once per configuration and serves any weights of that shape.
The weights are SAELens's, under SAELens's names and layouts (SPEC.md section 5):
``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_out]``, ``b_dec [d_out]``, and
``threshold [d_sae]`` for a JumpReLU. ``d_out == d_in`` for an SAE; a transcoder reads one hook
and writes another, whose width may differ.

The inference architectures are SAELens's three, each computing exactly what SAELens's
``encode`` computes for it:

- ``standard``: ``relu(pre)``;
- ``jumprelu``: ``relu(pre) * (pre > threshold)`` (a trained BatchTopK SAE is exported as this,
  with its learned global threshold);
- ``topk``: the ``k`` largest of ``pre``, ReLU'd, every other latent 0;

where ``pre = (x - b_dec * apply_b_dec_to_input) @ W_enc + b_enc``, scaled by the decoder row norms
when ``rescale_acts_by_decoder_norm`` (a SAELens TopK option that ``decode`` undoes).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp

ARCHITECTURES = ("standard", "jumprelu", "topk")


@dataclass(frozen=True)
class SAEConfig:
    """Everything about an SAE that is not a weight. Hashable: it is the pytree's static part."""

    architecture: str  # one of ARCHITECTURES (inference form)
    d_in: int
    d_sae: int
    d_out: int
    k: int | None = None  # topk only
    apply_b_dec_to_input: bool = True  # always False for a transcoder (b_dec has d_out entries)
    rescale_acts_by_decoder_norm: bool = False
    dtype: str = "float32"  # of the weights
    hook_name: str | None = None
    hook_name_out: str | None = None  # a transcoder's output hook
    model_name: str | None = None
    # The rest of cfg.json's ``metadata`` as sorted JSON, kept for round trips (hashable).
    metadata_json: str = field(default="{}", compare=False)

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.architecture == "topk" and not (self.k and 0 < self.k <= self.d_sae):
            raise ValueError(f"a topk SAE needs 0 < k <= d_sae ({self.d_sae}), got k={self.k}")

    @property
    def is_transcoder(self) -> bool:
        return self.hook_name_out is not None or self.d_out != self.d_in

    @property
    def metadata(self) -> dict:
        return json.loads(self.metadata_json)

    @property
    def output_hook(self) -> str | None:
        """The hook whose activation this SAE reconstructs: ``hook_name_out`` for a transcoder."""
        return self.hook_name_out if self.is_transcoder else self.hook_name


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class SAE:
    """The weights (pytree leaves) and the config (static). Methods are the pure functions below."""

    W_enc: jax.Array
    b_enc: jax.Array
    W_dec: jax.Array
    b_dec: jax.Array
    threshold: jax.Array | None
    cfg: SAEConfig = field(metadata={"static": True})

    def encode(self, x: jax.Array) -> jax.Array:
        return encode(self, x)

    def decode(self, z: jax.Array) -> jax.Array:
        return decode(self, z)

    def __call__(self, x: jax.Array) -> jax.Array:
        return decode(self, encode(self, x))

    def replace(self, **changes: Any) -> SAE:
        return dataclasses.replace(self, **changes)

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def hook_name(self) -> str | None:
        return self.cfg.hook_name


def pre_activations(sae: SAE, x: jax.Array) -> jax.Array:
    """``[..., d_sae]`` before the sparsifying nonlinearity, in the weights' dtype."""
    x = x.astype(sae.W_enc.dtype)
    if sae.cfg.apply_b_dec_to_input:
        x = x - sae.b_dec
    pre = x @ sae.W_enc + sae.b_enc
    if sae.cfg.rescale_acts_by_decoder_norm:
        pre = pre * jnp.linalg.norm(sae.W_dec, axis=-1)
    return pre


def encode(sae: SAE, x: jax.Array) -> jax.Array:
    """``x [..., d_in]`` -> latents ``z [..., d_sae]`` (see the module doc for each architecture)."""
    pre = pre_activations(sae, x)
    arch = sae.cfg.architecture
    if arch == "standard":
        return jax.nn.relu(pre)
    if arch == "jumprelu":
        return jnp.where(pre > sae.threshold, jax.nn.relu(pre), 0.0).astype(pre.dtype)
    return topk_activation(pre, sae.cfg.k)


def decode(sae: SAE, z: jax.Array) -> jax.Array:
    """latents ``z [..., d_sae]`` -> reconstruction ``[..., d_out]``."""
    z = z.astype(sae.W_dec.dtype)
    if sae.cfg.rescale_acts_by_decoder_norm:
        z = z / jnp.linalg.norm(sae.W_dec, axis=-1)
    return z @ sae.W_dec + sae.b_dec


def topk_activation(pre: jax.Array, k: int) -> jax.Array:
    """Keep the ``k`` largest entries of the last axis (ReLU'd), zero the rest. Exactly ``k``
    entries are kept even with ties (``lax.top_k`` picks the lower indices), as torch.topk does
    up to the order of tied indices."""
    values, indices = jax.lax.top_k(pre, k)
    flat_vals = jax.nn.relu(values).reshape(-1, k)
    flat_idx = indices.reshape(-1, k)
    rows = jnp.arange(flat_idx.shape[0])[:, None]
    out = jnp.zeros((flat_idx.shape[0], pre.shape[-1]), pre.dtype).at[rows, flat_idx].set(flat_vals)
    return out.reshape(pre.shape)


def new_sae(cfg: SAEConfig, W_enc, b_enc, W_dec, b_dec, threshold=None) -> SAE:
    """An SAE from arrays (numpy or jax), checked against ``cfg``'s shapes, cast to its dtype."""
    dtype = jnp.dtype(cfg.dtype)
    want = {"W_enc": (cfg.d_in, cfg.d_sae), "b_enc": (cfg.d_sae,), "W_dec": (cfg.d_sae, cfg.d_out),
            "b_dec": (cfg.d_out,)}
    got = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    if cfg.architecture == "jumprelu":
        if threshold is None:
            raise ValueError("a jumprelu SAE needs a threshold")
        want["threshold"] = (cfg.d_sae,)
        got["threshold"] = threshold
    for name, shape in want.items():
        if tuple(got[name].shape) != shape:
            raise ValueError(f"{name}: expected shape {list(shape)}, got {list(got[name].shape)}")
    arrays = {name: jnp.asarray(value, dtype) for name, value in got.items()}
    return SAE(cfg=cfg, threshold=arrays.pop("threshold", None), **arrays)
