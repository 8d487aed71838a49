"""Checkpoints derived from the tiny random model for tests that need the model to *write*
something: a head whose greedy choice is always one of a few tokens."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

# In pairs (w, -w): of each pair one logit is >= 0, every other token's is 0, so greedy decoding
# only ever writes digits, newlines and the separator "x": grids.
GRID_TOKENS = ["0", "5", "1", "6", "2", "7", "3", "8", "4", "9", "Ċ", "x"]


def grid_writing_model(tiny_model_dir: Path, out: Path, tokens=GRID_TOKENS, seed: int = 0) -> Path:
    """A copy of ``tiny_model_dir`` at ``out`` with an untied head that writes only ``tokens``."""
    from transformers import AutoTokenizer

    shutil.copytree(tiny_model_dir, out)
    weights = load_file(str(out / "model.safetensors"))
    vocab, d = weights["model.embed_tokens.weight"].shape
    ids = AutoTokenizer.from_pretrained(str(out)).convert_tokens_to_ids(list(tokens))
    rows = np.random.default_rng(seed).standard_normal((len(tokens) // 2, d)).astype(np.float32)
    head = np.zeros((vocab, d), np.float32)
    head[ids[0::2]] = rows
    head[ids[1::2]] = -rows
    save_file({**weights, "lm_head.weight": head}, str(out / "model.safetensors"))
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    return out
