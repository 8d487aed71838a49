"""Synthetic samples for store tests: deterministic per key, so a reader's output can be checked
against what was written without keeping it around."""

from __future__ import annotations

import zlib

import ml_dtypes
import numpy as np

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"]
D_MODEL = 16


def store_metadata(hooks=HOOKS, d_model=D_MODEL, dtype="bfloat16", **extra) -> dict:
    meta = {
        "model": {"name": "random-tiny", "hidden_size": d_model, "num_hidden_layers": 2, "dtype": "float32"},
        "hooks": list(hooks),
        "dtype": dtype,
        "d_model": d_model,
        "positions": "all",
        "prompt": {"version": "output-from-examples-v1", "encoder": "E", "predictions_per_task": 2,
                   "seed": 0, "with_answer": False},
        "tasks": {"source": "synthetic", "count": 3},
    }
    meta.update(extra)
    return meta


def sample(key: str, n: int | None = None, hooks=HOOKS, d_model=D_MODEL, dtype=np.float32):
    """(sample_meta, arrays) for ``key``; values are a function of the key alone."""
    seed = zlib.crc32(key.encode())
    rng = np.random.default_rng(seed)
    if n is None:
        n = int(rng.integers(1, 40))
    task_id, test_index, aug = key.split("/")
    meta = {"key": key, "task_id": task_id, "test_index": int(test_index),
            "augmentation": {"hflip": bool(int(aug) % 2), "rot90": int(aug) % 4,
                             "color_map": list(range(10)), "train_order": [0, 1]},
            "prompt_tokens": n + 3}
    arrays = {h: (rng.standard_normal((n, d_model)) * (i + 1)).astype(dtype) for i, h in enumerate(hooks)}
    arrays["position"] = np.arange(3, n + 3, dtype=np.int32)
    arrays["token_id"] = rng.integers(0, 1000, n).astype(np.int32)
    arrays["grid"] = rng.integers(-1, 4, n).astype(np.int16)
    arrays["row"] = rng.integers(-1, 30, n).astype(np.int16)
    arrays["col"] = rng.integers(-1, 30, n).astype(np.int16)
    return meta, arrays


def keys(n_tasks: int, n_aug: int = 2) -> list[str]:
    return [f"task{t:03d}/0/{a}" for t in range(n_tasks) for a in range(n_aug)]


def expected(key: str, name: str, stored_dtype=ml_dtypes.bfloat16) -> np.ndarray:
    """What the store must return for ``key``'s tensor ``name`` (hooks cast to the stored dtype)."""
    _, arrays = sample(key)
    arr = arrays[name]
    return arr.astype(stored_dtype) if arr.ndim == 2 else arr


def write(dest, keys_, writer="w0", shard_bytes=4000, storage_options=None, **meta_extra):
    from arclens.store.writer import StoreWriter, open_or_create_store

    open_or_create_store(dest, store_metadata(**meta_extra), storage_options=storage_options)
    with StoreWriter(dest, writer, shard_bytes=shard_bytes, storage_options=storage_options) as w:
        for k in keys_:
            w.add(*sample(k))
    return w
