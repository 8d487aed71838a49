"""A checkpoint directory's weights files: which ones hold the tensors, and their headers.

The one reader of both, shared by ``loading.py`` (which then reads tensors through safetensors)
and ``fingerprint.py`` (which hashes the headers and sampled bytes). Every problem is a UserError
naming the file.

- ``weight_map(root)``: tensor name -> file name, from ``model.safetensors.index.json`` or from
  the header of the single ``model.safetensors``;
- ``weight_files(root)``: those files, sorted;
- ``read_header(f, path)``: a safetensors header parsed as JSON (nothing executes), checked
  against the file's size.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from arclens.errors import UserError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
MAX_HEADER_BYTES = 100_000_000  # safetensors' own cap


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str  # safetensors' name: F32, BF16, ...
    shape: list[int]
    offsets: list[int]  # [begin, end) in the data region


@dataclass(frozen=True)
class Header:
    data_start: int  # 8 + header length: where the data region begins
    size: int  # the file's size
    tensors: list[TensorEntry]  # sorted by name


def weight_map(root: str | os.PathLike) -> dict[str, str]:
    """Tensor name -> weights file (a bare file name in ``root``)."""
    root = Path(root)
    index = root / INDEX_FILE
    if index.is_file():
        try:
            mapping = json.loads(index.read_text())["weight_map"]
            if not isinstance(mapping, dict) or not mapping:
                raise TypeError("weight_map is not a non-empty object")
            mapping = {str(k): str(v) for k, v in mapping.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise UserError(f"{index}: not a valid safetensors index ({e})") from None
        for f in set(mapping.values()):
            if Path(f).name != f:
                raise UserError(f"{index}: weight file {f!r} is not a file name in {root}")
            if not (root / f).is_file():
                raise UserError(f"{root / f}: missing; {INDEX_FILE} lists it")
        return mapping
    if (root / SINGLE_FILE).is_file():
        with open(root / SINGLE_FILE, "rb") as f:
            return {t.name: SINGLE_FILE for t in read_header(f, root / SINGLE_FILE).tensors}
    others = sorted(q.name for q in root.glob("*.safetensors"))
    bins = sorted(q.name for q in root.glob("*.bin"))
    hint = (f"found {others} without {INDEX_FILE}" if others
            else f"found only {bins}; convert to safetensors" if bins else "found no weights")
    raise UserError(f"{root}: expected {SINGLE_FILE} or {INDEX_FILE} with its shards ({hint})")


def weight_files(root: str | os.PathLike) -> list[str]:
    """The safetensors files of a checkpoint directory, sorted."""
    return sorted(set(weight_map(root).values()))


def read_header(f, path: str | os.PathLike) -> Header:
    """The header of the safetensors file open as ``f`` (at offset 0); UserError naming ``path``
    for a file that is not one, or whose tensors lie outside it (a truncated file)."""
    try:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) < 8:
            raise UserError(f"{path}: not a safetensors file (shorter than its header length)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise UserError(f"{path}: not a safetensors file (header length {n} for a {size}-byte file)")
        raw = f.read(n)
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        header = json.loads(raw)
        tensors = []
        for k, v in header.items():
            if k == "__metadata__":
                continue
            begin, end = (int(o) for o in v["data_offsets"])
            tensors.append(TensorEntry(str(k), str(v["dtype"]), [int(s) for s in v["shape"]], [begin, end]))
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise UserError(f"{path}: not a safetensors file (bad header: {e})") from None
    for t in tensors:
        if not 0 <= t.offsets[0] <= t.offsets[1] <= size - 8 - n:
            raise UserError(f"{path}: tensor {t.name!r} has data_offsets {t.offsets} outside the file's "
                            f"{size - 8 - n}-byte data region (truncated?)")
    return Header(8 + n, size, sorted(tensors, key=lambda t: t.name))
