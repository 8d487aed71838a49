"""A cheap, content-based fingerprint of a checkpoint's weights, so a store can tell one model
from another regardless of how its path was spelled.

``weights_fingerprint(model_dir)`` returns ``"sampled-sha256-v1:<64 hex>"``: the sha256 of

1. the fields of ``config.json`` that define the model's shape and numerics (``FINGERPRINT_CONFIG_FIELDS``;
   ``rope_theta`` read from the top level or from ``rope_parameters``, so a re-save by a newer
   transformers that only moves it does not change the fingerprint). Bookkeeping fields such as
   ``transformers_version``, ``_name_or_path`` or ``torch_dtype`` are left out (the weights'
   real dtypes are in the safetensors headers);
2. for every weights file (those ``model.safetensors.index.json`` names, or ``model.safetensors``),
   in name order: its file name, its size in bytes, and its safetensors header reduced to each
   tensor's name, dtype, shape and data offsets (``__metadata__`` and JSON spacing left out);
3. ``BLOCKS_PER_FILE`` blocks of ``BLOCK_BYTES`` bytes of each file's tensor data, evenly spaced
   from the first data byte to the last (the whole data region when it is no larger than that).

It reads the headers plus at most 16 x 64 KiB = 1 MiB per file with plain seeks and reads, so a
7B checkpoint (~15 GB in 4 files) costs ~4 MiB of reads: a few milliseconds on local disk, well
under a second cold. It never loads or maps a whole file.

What it detects: other weights of any kind that a training run, a conversion or a different
random seed produces (these change essentially every byte, so every sampled block); another
config (layers, widths, heads, vocabulary, RoPE theta, norm epsilon, tied embeddings); another
dtype, tensor set, tensor shape or file layout; a truncated or extended file. Two random
checkpoints with the same config and different seeds always differ.

What it cannot detect: a change confined to bytes that no block samples (for example one tensor
edited by hand, or a few weights patched, between sampled blocks), and files other than
config.json and the weights: the tokenizer and its chat template are not covered (the store's
``prompt`` settings and sample keys are compared separately). The same weights re-sharded into
other files, or re-saved with tensors in another order, get a different fingerprint: the check
errs on the side of refusing.

Why not a full hash: a checkpoint is read from disk at a few GB/s at best, and Qwen2.5-72B is
~145 GB, so hashing it would add minutes to every start and to every resume, which is exactly
when a run should be quick. The fingerprint guards against the realistic mistake (another
checkpoint at the same path, or the same checkpoint under another name), not against tampering.

Anything that records a model in an activation store (``arclens extract``, ``arclens infer
--hooks``) can call ``weights_fingerprint(resolved_model_dir)`` and store the result as
``model.fingerprint``; ``arclens.store.format.metadata_differences`` then compares stores by it.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

from arclens.errors import UserError

SCHEME = "sampled-sha256-v1"
BLOCKS_PER_FILE = 16
BLOCK_BYTES = 64 << 10
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
_MAX_HEADER_BYTES = 100_000_000

# config.json fields that change what the weights compute (or how they are laid out).
FINGERPRINT_CONFIG_FIELDS = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "hidden_act",
    "rms_norm_eps",
    "tie_word_embeddings",
    "rope_scaling",
    "use_sliding_window",
)


def weights_fingerprint(model_dir: str | os.PathLike) -> str:
    """``"sampled-sha256-v1:<hex>"`` for the checkpoint in ``model_dir`` (a resolved local
    directory). Raises UserError naming the file for a missing or unreadable config or weights."""
    root = Path(model_dir)
    digest = hashlib.sha256(SCHEME.encode() + b"\0")
    digest.update(_canonical(_config_fields(root)) + b"\0")
    for name in weight_files(root):
        _hash_file(digest, root / name, name)
    return f"{SCHEME}:{digest.hexdigest()}"


def weight_files(root: Path) -> list[str]:
    """The safetensors files of a checkpoint directory, sorted: the ones its index names, or the
    single ``model.safetensors``."""
    index = root / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted({str(v) for v in weight_map.values()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise UserError(f"{index}: not a valid safetensors index ({e})") from None
        if not files:
            raise UserError(f"{index}: lists no weight files")
        for f in files:
            if Path(f).name != f:
                raise UserError(f"{index}: weight file {f!r} is not a file name in {root}")
        return files
    if (root / SINGLE_FILE).is_file():
        return [SINGLE_FILE]
    raise UserError(f"{root}: expected {SINGLE_FILE} or {INDEX_FILE} with its shards")


def _config_fields(root: Path) -> dict:
    path = root / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    except ValueError as e:
        raise UserError(f"{path}: not JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{path}: not a JSON object")
    fields = {k: cfg[k] for k in FINGERPRINT_CONFIG_FIELDS if cfg.get(k) is not None}
    params = cfg.get("rope_parameters") if isinstance(cfg.get("rope_parameters"), dict) else {}
    theta = cfg.get("rope_theta", params.get("rope_theta"))
    if theta is not None:
        fields["rope_theta"] = float(theta)
    if isinstance(fields.get("rms_norm_eps"), int | float):
        fields["rms_norm_eps"] = float(fields["rms_norm_eps"])
    return fields


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _hash_file(digest, path: Path, name: str) -> None:
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise UserError(f"{path}: not a safetensors file (shorter than its header length)")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER_BYTES or 8 + n > size:
                raise UserError(f"{path}: not a safetensors file (header length {n} for a {size}-byte file)")
            raw = f.read(n)
            try:
                header = json.loads(raw)
                tensors = sorted(
                    (str(k), str(v["dtype"]), [int(s) for s in v["shape"]], [int(o) for o in v["data_offsets"]])
                    for k, v in header.items() if k != "__metadata__"
                )
            except (ValueError, TypeError, KeyError, AttributeError) as e:
                raise UserError(f"{path}: not a safetensors file (bad header: {e})") from None
            digest.update(_canonical({"file": name, "bytes": size, "tensors": tensors}) + b"\0")
            data_start = 8 + n
            for offset in block_offsets(data_start, size):
                f.seek(offset)
                digest.update(f.read(BLOCK_BYTES))
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None


def block_offsets(start: int, end: int, blocks: int = BLOCKS_PER_FILE, block: int = BLOCK_BYTES) -> list[int]:
    """Where the sampled blocks of the data region ``[start, end)`` begin: one block covering it
    all when it holds no more than ``blocks`` blocks, else ``blocks`` evenly spaced ones, the first
    at ``start`` and the last ending at ``end``."""
    length = end - start
    if length <= 0:
        return []
    if length <= blocks * block:
        return [start + i * block for i in range(-(-length // block))]
    span = length - block
    return [start + (i * span) // (blocks - 1) for i in range(blocks)]
