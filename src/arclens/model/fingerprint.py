"""A cheap, content-based fingerprint of a checkpoint (config, weights and tokenizer), so a store
can tell one model from another regardless of how its path was spelled.

``model_fingerprint(model_dir)`` returns ``"sampled-sha256-v2:<64 hex>"``: the sha256 of

1. the fields of ``config.json`` that define the model's shape and numerics (``FINGERPRINT_CONFIG_FIELDS``;
   ``rope_theta`` read from the top level or from ``rope_parameters``, so a re-save by a newer
   transformers that only moves it does not change the fingerprint). Bookkeeping fields such as
   ``transformers_version``, ``_name_or_path`` or ``torch_dtype`` are left out (the weights'
   real dtypes are in the safetensors headers);
2. for every weights file (those ``model.safetensors.index.json`` names, or ``model.safetensors``),
   in name order: its file name, its size in bytes, and its safetensors header reduced to each
   tensor's name, dtype, shape and data offsets (``__metadata__`` and JSON spacing left out);
   then the bytes of its sampled ranges in file order (overlapping and touching ranges merged, so
   no byte counts twice), which are the union of
   a. ``BLOCKS_PER_FILE`` blocks of ``BLOCK_BYTES`` bytes of its tensor data, evenly spaced from
      the first data byte to the last (the whole data region when it is no larger than that), and
   b. for EVERY tensor in its header, ``TENSOR_BLOCK_BYTES`` at the start of the tensor's data,
      as many at its middle and as many at its end (the whole tensor when it is no larger than
      three such blocks);
3. every tokenizer file present in the directory (``TOKENIZER_FILES``: ``tokenizer.json``,
   ``tokenizer_config.json`` with its chat template, ``chat_template.jinja``/``.json``, the BPE
   ``vocab.json``/``merges.txt``, the special and added tokens), hashed whole, by name.

Read budget: per weights file its header, at most 16 x 64 KiB = 1 MiB of evenly spaced blocks
and at most 3 x 4 KiB = 12 KiB per tensor; plus the tokenizer files whole (~11 MiB for Qwen2.5's
tokenizer.json, vocab.json and merges.txt). A 7B checkpoint (~15 GB in 4 files, ~340 tensors)
costs ~4 + ~4 + ~11 MiB; Qwen2.5-72B (~145 GB in 37 files, ~960 tensors) ~37 + ~11 + ~11 MiB in
fewer than 3,000 seeks and reads (a tensor's end block and the next tensor's start block touch
and are read as one). That is tens of milliseconds warm and a fraction of a second cold on an SSD;
more on a spinning disk or a network file system that serves each read separately. It never loads
or maps a whole weights file.

What it detects: other weights of any kind that a training run, a conversion or a different
random seed produces; a change to any whole tensor, however small the tensor, for example a
LoRA merged into a few projections, a fine-tune of a few layers, one re-trained layer norm or
bias, a patched embedding (such a change alters the tensor's first, middle and last bytes, and
every one of those is sampled); another config (layers, widths, heads, vocabulary, RoPE theta,
norm epsilon, tied embeddings); another dtype, tensor set, tensor shape or file layout; a file
extended past its tensors; another tokenizer, vocabulary, merge list, special token or chat
template. Two random checkpoints with the same config and different seeds always differ. A
header whose tensors lie outside the file (a truncated file) is a UserError naming the file.

What it cannot detect: a change confined to bytes inside a tensor that no block samples (a few
weights patched by hand, away from the tensor's start, middle and end and from the evenly spaced
blocks), and files other than config.json, the weights and the tokenizer files above (for
example generation_config.json, or a named template under additional_chat_templates/). The same
weights re-sharded into other files, or re-saved with tensors in another order, get a different
fingerprint: the check errs on the side of refusing.

Why not a full hash: a checkpoint is read from disk at a few GB/s at best, and Qwen2.5-72B is
~145 GB, so hashing it would add minutes to every start and to every resume, which is exactly
when a run should be quick. The fingerprint guards against the realistic mistake (another
checkpoint or tokenizer at the same path, or the same checkpoint under another name), not
against tampering.

Anything that records a model in an activation store (``arclens extract``, ``arclens infer
--hooks``) can call ``model_fingerprint(resolved_model_dir)`` and store the result as
``model.fingerprint``; ``arclens.store.format.metadata_differences`` then compares stores by it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from arclens.errors import UserError
from arclens.model.checkpoint import read_header, weight_files

SCHEME = "sampled-sha256-v2"
BLOCKS_PER_FILE = 16
BLOCK_BYTES = 64 << 10
TENSOR_BLOCK_BYTES = 4 << 10
_CHUNK = 1 << 20

# What a tokenizer (AutoTokenizer.from_pretrained) and its chat template are read from; each one
# present is hashed whole. tokenizer.model is the sentencepiece file of non-BPE tokenizers.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
)

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


def model_fingerprint(model_dir: str | os.PathLike) -> str:
    """``"sampled-sha256-v2:<hex>"`` for the checkpoint in ``model_dir`` (a resolved local
    directory): its config, sampled weights and whole tokenizer files (module docstring). Raises
    UserError naming the file for a missing or unreadable config or weights, or an unreadable
    tokenizer file."""
    root = Path(model_dir)
    digest = hashlib.sha256(SCHEME.encode() + b"\0")
    digest.update(_canonical(_config_fields(root)) + b"\0")
    for name in weight_files(root):
        _hash_weights(digest, root / name, name)
    for name in TOKENIZER_FILES:
        _hash_tokenizer_file(digest, root / name, name)
    return f"{SCHEME}:{digest.hexdigest()}"


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


def _hash_weights(digest, path: Path, name: str) -> None:
    try:
        with open(path, "rb") as f:
            header = read_header(f, path)
            tensors = [[t.name, t.dtype, t.shape, t.offsets] for t in header.tensors]
            digest.update(_canonical({"file": name, "bytes": header.size, "tensors": tensors}) + b"\0")
            spans = [(header.data_start + t.offsets[0], header.data_start + t.offsets[1]) for t in header.tensors]
            for offset, length in sampled_ranges(header.data_start, header.size, spans):
                f.seek(offset)
                digest.update(f.read(length))
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None


def _hash_tokenizer_file(digest, path: Path, name: str) -> None:
    try:
        with open(path, "rb") as f:
            h = hashlib.sha256()
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except FileNotFoundError:
        return  # absent (or a dangling link): the tokenizer does not read it either
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    digest.update(_canonical({"tokenizer_file": name, "sha256": h.hexdigest()}) + b"\0")


def sampled_ranges(
    start: int,
    end: int,
    tensor_spans: list[tuple[int, int]],
    blocks: int = BLOCKS_PER_FILE,
    block: int = BLOCK_BYTES,
    tensor_block: int = TENSOR_BLOCK_BYTES,
) -> list[tuple[int, int]]:
    """The ``(offset, length)`` ranges of a weights file that the fingerprint reads, sorted and
    merged where they overlap or touch: the evenly spaced blocks of the data region ``[start,
    end)`` (``block_offsets``) and each tensor's start, middle and end blocks (``tensor_blocks``;
    ``tensor_spans`` are the tensors' absolute ``(begin, end)`` in the file)."""
    ranges = [(o, min(block, end - o)) for o in block_offsets(start, end, blocks, block)]
    for begin, stop in tensor_spans:
        ranges.extend(tensor_blocks(begin, stop, tensor_block))
    merged: list[list[int]] = []
    for offset, length in sorted(ranges):
        if merged and offset <= merged[-1][0] + merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], offset + length - merged[-1][0])
        else:
            merged.append([offset, length])
    return [(o, n) for o, n in merged]


def tensor_blocks(begin: int, end: int, block: int = TENSOR_BLOCK_BYTES) -> list[tuple[int, int]]:
    """The ``(offset, length)`` blocks sampled from one tensor's data ``[begin, end)``: all of it
    when it holds no more than three blocks, else one block at its start, one at its middle and
    one ending at its end."""
    length = end - begin
    if length <= 0:
        return []
    if length <= 3 * block:
        return [(begin, length)]
    return [(begin, block), (begin + (length - block) // 2, block), (end - block, block)]


def block_offsets(start: int, end: int, blocks: int = BLOCKS_PER_FILE, block: int = BLOCK_BYTES) -> list[int]:
    """Where the evenly spaced blocks of the data region ``[start, end)`` begin: blocks covering
    it all when it holds no more than ``blocks`` blocks, else ``blocks`` evenly spaced ones, the
    first at ``start`` and the last ending at ``end``."""
    length = end - start
    if length <= 0:
        return []
    if length <= blocks * block:
        return [start + i * block for i in range(-(-length // block))]
    span = length - block
    return [start + (i * span) // (blocks - 1) for i in range(blocks)]
