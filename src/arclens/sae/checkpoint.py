"""Checkpoints of a training run, local or on any fsspec filesystem, never half-written.

``OUT/checkpoints/`` holds one run-level checkpoint for all the SAEs of the run (they share one
data stream, so one commit keeps them at the same step):

1. ``step-<N:09d>.safetensors`` is written whole (a temporary file and a rename locally, one
   upload on an object store): every SAE's state leaves, the data position's arrays, and a JSON
   header (step, settings, data position, metrics so far);
2. ``latest.json`` is then written whole, naming it: that small object is the commit;
3. older step files (and temporary files a killed write left) are removed.

A crash at any point leaves ``latest.json`` naming a complete file. Resume reads it, refuses other
settings (naming each differing field), and restores every leaf bit for bit.
"""

from __future__ import annotations

import json

import numpy as np

from arclens.crashpoints import crash_point
from arclens.errors import UserError
from arclens.store import fs as fsx

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest.json"
FORMAT = "arclens-sae-checkpoint"
VERSION = 1


def step_file(step: int) -> str:
    return f"step-{step:09d}.safetensors"


def leaves_with_names(tree, prefix: str) -> list[tuple[str, object]]:
    """``[(name, leaf)]`` in a fixed order, names built from the pytree paths."""
    import jax

    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        out.append((prefix + "/" + "/".join(_key(k) for k in path), leaf))
    return out


def _key(k) -> str:
    for attr in ("name", "key", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def save(fs, root: str, step: int, arrays: dict[str, np.ndarray], header: dict) -> None:
    """Write checkpoint ``step`` and commit it (see the module doc)."""
    from safetensors.numpy import save as st_save

    folder = fsx.join(root, CHECKPOINT_DIR)
    if fsx.is_local(fs):
        fs.makedirs(folder, exist_ok=True)
    name = step_file(step)
    out, bf16 = {}, []
    for k, v in arrays.items():
        a = np.array(v, order="C")  # keeps 0-d arrays 0-d
        if a.dtype == _bf16():  # safetensors.numpy cannot read BF16 back: stored as its bits, named in the header
            bf16.append(k)
            a = a.view(np.uint16)
        out[k] = a
    meta = {"header": json.dumps({**header, "format": FORMAT, "version": VERSION, "step": step, "bf16": bf16})}
    blob = st_save(out, metadata=meta)
    fsx.write_whole(fs, fsx.join(folder, name), blob)
    crash_point("sae-checkpoint-written")
    pointer = {"format": FORMAT, "version": VERSION, "step": step, "file": name, "settings": header.get("settings")}
    fsx.write_whole(fs, fsx.join(folder, LATEST), json.dumps(pointer, indent=1).encode())
    for old in fsx.list_names(fs, folder):
        if old not in (LATEST, name):
            _remove(fs, fsx.join(folder, old))


def load_latest(fs, root: str) -> tuple[dict, dict[str, np.ndarray]] | None:
    """``(header, arrays)`` of the committed checkpoint, or None when there is none."""
    from safetensors.numpy import load as st_load

    folder = fsx.join(root, CHECKPOINT_DIR)
    try:
        pointer = json.loads(fsx.read_bytes(fs, fsx.join(folder, LATEST)))
    except FileNotFoundError:
        return None
    except ValueError as err:
        raise UserError(f"{folder}/{LATEST}: not a checkpoint pointer ({err}); remove {folder} to start over") from None
    if pointer.get("format") != FORMAT or pointer.get("version") != VERSION:
        raise UserError(f"{folder}/{LATEST}: not an arclens SAE checkpoint of version {VERSION}")
    blob = fsx.read_bytes(fs, fsx.join(folder, pointer["file"]))
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(json.loads(blob[8 : 8 + n])["__metadata__"]["header"])
    arrays = st_load(blob)
    for k in header.get("bf16") or ():  # bf16 arrays (a bf16 source's carry) were saved as their bits
        arrays[k] = arrays[k].view(_bf16())
    return header, arrays


def _bf16() -> np.dtype:
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


def remove_all(fs, root: str) -> None:
    folder = fsx.join(root, CHECKPOINT_DIR)
    for name in fsx.list_names(fs, folder):
        _remove(fs, fsx.join(folder, name))
    if fsx.is_local(fs):
        try:
            fs.rmdir(folder)
        except OSError:
            pass


def _remove(fs, path: str) -> None:
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass


def restore_leaves(template, arrays: dict[str, np.ndarray], prefix: str, where: str):
    """``template`` (a pytree of arrays) with every leaf replaced by the checkpoint's array of the
    same name; shapes and dtypes must match exactly."""
    import jax

    named = leaves_with_names(template, prefix)
    values = []
    for name, leaf in named:
        if name not in arrays:
            raise UserError(f"{where}: the checkpoint has no {name}; remove the checkpoints folder to start over")
        value = arrays[name]
        if tuple(value.shape) != tuple(leaf.shape) or np.dtype(value.dtype) != np.dtype(leaf.dtype):
            raise UserError(f"{where}: {name} is {value.dtype}{list(value.shape)} in the checkpoint, expected "
                            f"{np.dtype(leaf.dtype)}{list(leaf.shape)}")
        values.append(value)
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), values)
