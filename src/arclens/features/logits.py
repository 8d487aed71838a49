"""The logit effect of each latent, and the token strings of the model's tokenizer.

A latent's decoder direction is read through the final RMSNorm's weight and the unembedding,
``(W_dec[f] * final_norm) @ W_U``, as SAE-Vis and Neuronpedia compute it on a model whose norm
weight is folded into ``W_U``. Only those two tensors are read from the checkpoint (never the
whole model), and the ``[F, V]`` product is made on the device a chunk of latents at a time.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from arclens.errors import UserError

LATENT_CHUNK = 256


def unembedding(model_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(final norm weight [D], unembedding rows [V, D]) as float32: lm_head, or the embeddings when tied."""
    import ml_dtypes  # noqa: F401 - lets safetensors hand bf16 tensors to numpy

    from arclens.model.config import QwenConfig
    from arclens.model.loading import Checkpoint

    config = QwenConfig.from_pretrained(model_path)
    with Checkpoint(model_path) as ckpt:
        norm = np.asarray(ckpt.get_slice("model.norm.weight")[:], np.float32)
        name = "model.embed_tokens.weight" if config.tie_word_embeddings else "lm_head.weight"
        head = np.asarray(ckpt.get_slice(name)[:], np.float32)
    return norm, head


@partial(jax.jit, static_argnums=3)
def _extremes(w_dec, norm, head, n: int):
    with jax.default_matmul_precision("float32"):
        effect = (w_dec.astype(jnp.float32) * norm) @ head.T
    top_v, top_i = jax.lax.top_k(effect, n)
    bottom_v, bottom_i = jax.lax.top_k(-effect, n)
    return top_i, top_v, bottom_i, -bottom_v


def logit_effect(w_dec: np.ndarray, model_path: Path, n: int, n_vocab: int | None = None) -> dict[str, np.ndarray]:
    """``top/bottom_logit_ids`` int32 [F, n] and ``top/bottom_logit_values`` float32 [F, n], best first.
    Only the first `n_vocab` rows count (checkpoints pad the vocabulary beyond the tokenizer's)."""
    norm, head = unembedding(model_path)
    if w_dec.shape[1] != norm.shape[0]:
        raise UserError(f"--model {model_path}: its hidden size is {norm.shape[0]} but the SAE's decoder "
                        f"writes {w_dec.shape[1]} dimensions")
    if n_vocab is not None:
        head = head[: min(n_vocab, len(head))]
    n = min(n, len(head))
    norm_d, head_d = jnp.asarray(norm), jnp.asarray(head)
    parts = []
    for start in range(0, len(w_dec), LATENT_CHUNK):
        chunk = np.asarray(w_dec[start:start + LATENT_CHUNK], np.float32)
        rows = len(chunk)
        if rows < LATENT_CHUNK and len(w_dec) > LATENT_CHUNK:  # one compiled shape for every chunk
            chunk = np.concatenate([chunk, np.zeros((LATENT_CHUNK - rows, chunk.shape[1]), np.float32)])
        parts.append([np.asarray(a)[:rows] for a in _extremes(jnp.asarray(chunk), norm_d, head_d, n)])
    ti, tv, bi, bv = (np.concatenate([p[i] for p in parts]) for i in range(4))
    return {"top_logit_ids": ti.astype(np.int32), "top_logit_values": tv.astype(np.float32),
            "bottom_logit_ids": bi.astype(np.int32), "bottom_logit_values": bv.astype(np.float32)}


class TokenStrings:
    """``tokenizer.decode([id])`` for ids, cached (a vocabulary's strings are untrusted text)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, ids) -> list[str | None]:
        if self.tokenizer is None:
            return [None] * len(ids)
        out = []
        for i in np.asarray(ids).tolist():
            s = self._cache.get(i)
            if s is None:
                s = self._cache[i] = self.tokenizer.decode([i])
            out.append(s)
        return out
