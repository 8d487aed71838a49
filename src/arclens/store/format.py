"""Store format v1 (SPEC.md section 3): names, the safetensors layout, and metadata checks.

Shards are written by a small streaming safetensors serializer (``write_shard``) instead of
``safetensors.numpy.save``: that function calls ``tobytes()`` on every tensor and then builds one
bytes object of the whole file, which costs two full copies of a multi-GB shard. Here the
per-sample arrays go straight from the writer's buffers to the file, hashed on the way. The output
is plain safetensors (checked against ``safetensors.safe_open`` in the tests).
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from arclens.crashpoints import crash_point

FORMAT = "arclens-activations"
VERSION = 1
METADATA_FILE = "metadata.json"
SHARDS_DIR = "shards"
INDEX_DIR = "index"
SHARD_SUFFIX = ".safetensors"
INDEX_SUFFIX = ".json"

# Per-token columns besides the hooks, with their stored dtypes (SPEC.md section 3).
COLUMNS: dict[str, np.dtype] = {
    "sample": np.dtype(np.int32),
    "position": np.dtype(np.int32),
    "token_id": np.dtype(np.int32),
    "grid": np.dtype(np.int16),
    "row": np.dtype(np.int16),
    "col": np.dtype(np.int16),
}
# What a caller passes to StoreWriter.add (the writer adds `sample` itself).
INPUT_COLUMNS = tuple(c for c in COLUMNS if c != "sample")

ACTIVATION_DTYPES: dict[str, np.dtype] = {
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float32": np.dtype(np.float32),
}
_SAFETENSORS_DTYPE = {
    np.dtype(ml_dtypes.bfloat16): "BF16",
    np.dtype(np.float32): "F32",
    np.dtype(np.float16): "F16",
    np.dtype(np.int32): "I32",
    np.dtype(np.int16): "I16",
    np.dtype(np.int64): "I64",
    np.dtype(np.int8): "I8",
    np.dtype(np.uint8): "U8",
}
_NUMPY_DTYPE = {v: k for k, v in _SAFETENSORS_DTYPE.items()}

# safetensors refuses headers over 100 MB. A sample-table entry is ~200-300 bytes, so this bound
# keeps the header under ~30 MB even for `--positions last` stores (one token per sample).
MAX_SAMPLES_PER_SHARD = 100_000
MAX_HEADER_BYTES = 100_000_000

_WRITER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SEQ_RE = re.compile(r"^(\d{6,})$")


def activation_dtype(name: str) -> np.dtype:
    try:
        return ACTIVATION_DTYPES[name]
    except KeyError:
        raise ValueError(f"activation dtype {name!r}: expected one of {', '.join(ACTIVATION_DTYPES)}") from None


def check_writer_name(writer: str) -> str:
    if not isinstance(writer, str) or not _WRITER_RE.match(writer):
        raise ValueError(f"writer name {writer!r}: expected letters, digits, '.', '_' or '-' (no '/')")
    return writer


def writer_name(process_id: int = 0, role: str | None = None, *, host: str | None = None,
                pid: int | None = None) -> str:
    """The default writer name, ``{host}[-{role}]-p{process_id}-{pid}``: the one recipe for every
    job that writes a store (extract: no role; a worker: ``w{I}``; infer: ``infer``). The pid
    keeps two runs started on one host at once from sharing a name: a writer name must never be
    used by two live processes at once."""
    import os
    import socket

    host = host or socket.gethostname().split(".")[0] or "host"
    host = re.sub(r"[^A-Za-z0-9._-]", "_", host).lstrip("._-") or "host"
    parts = [host, *([role] if role else []), f"p{process_id}", str(os.getpid() if pid is None else pid)]
    return check_writer_name("-".join(parts))


def shard_stem(writer: str, seq: int) -> str:
    return f"{writer}-{seq:06d}"


def shard_relpath(stem: str) -> str:
    return f"{SHARDS_DIR}/{stem}{SHARD_SUFFIX}"


def index_relpath(stem: str) -> str:
    return f"{INDEX_DIR}/{stem}{INDEX_SUFFIX}"


def seq_of(name: str, writer: str) -> int | None:
    """The seq of a shard or index file name (with suffix) written by ``writer``, else None."""
    for suffix in (SHARD_SUFFIX, INDEX_SUFFIX):
        if name.endswith(suffix):
            stem = name[: -len(suffix)]
            break
    else:
        return None
    if not stem.startswith(writer + "-"):
        return None
    m = _SEQ_RE.match(stem[len(writer) + 1 :])
    return int(m.group(1)) if m else None


def encode_json(obj) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()


# ---------------------------------------------------------------------------------------------
# safetensors


@dataclass(frozen=True)
class TensorInfo:
    dtype: np.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int


@dataclass(frozen=True)
class ShardHeader:
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_start: int

    @property
    def samples(self) -> list[dict]:
        return json.loads(self.metadata["samples"])


def _order(names_dtypes: list[tuple[str, np.dtype]]) -> list[tuple[str, np.dtype]]:
    # Widest items first: with an 8-aligned data start every tensor is then aligned to its item
    # size, so memory-mapped views are aligned numpy arrays.
    return sorted(names_dtypes, key=lambda nd: -nd[1].itemsize)


def build_header(
    tensors: list[tuple[str, np.dtype, tuple[int, ...]]], metadata: dict[str, str]
) -> tuple[bytes, list[tuple[str, int, int]]]:
    """Serialized header (length prefix included, padded) and the (name, start, end) layout."""
    order = _order([(n, dt) for n, dt, _ in tensors])
    shapes = {n: s for n, _, s in tensors}
    header: dict = {"__metadata__": metadata}
    layout, offset = [], 0
    for name, dt in order:
        size = int(np.prod(shapes[name], dtype=np.int64)) * dt.itemsize
        header[name] = {"dtype": _SAFETENSORS_DTYPE[dt], "shape": list(shapes[name]),
                        "data_offsets": [offset, offset + size]}
        layout.append((name, offset, offset + size))
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((-(8 + len(raw))) % 8)  # safetensors pads with spaces to an 8-byte boundary
    if len(raw) > MAX_HEADER_BYTES:
        raise ValueError(f"safetensors header of {len(raw)} bytes exceeds the 100 MB cap")
    return struct.pack("<Q", len(raw)) + raw, layout


def write_shard(f, tensors: dict[str, list[np.ndarray]], dtypes: dict[str, np.dtype],
                metadata: dict[str, str]) -> tuple[int, str]:
    """Write a safetensors file to the binary file object ``f`` from per-tensor lists of chunks
    (concatenated along axis 0, never materialised). Returns (bytes written, sha256 hex)."""
    specs = []
    for name, chunks in tensors.items():
        n = sum(c.shape[0] for c in chunks)
        specs.append((name, dtypes[name], (n, *chunks[0].shape[1:])))
    head, layout = build_header(specs, metadata)
    digest = hashlib.sha256(head)
    f.write(head)
    crash_point("shard-writing", flush=f)  # tests: a kill here leaves a header without its body
    total = len(head)
    for name, start, end in layout:
        written = 0
        for chunk in _coalesced(tensors[name], dtypes[name]):
            # Raw bytes without a copy (bf16 does not speak the buffer protocol, uint8 does).
            view = memoryview(chunk.reshape(-1).view(np.uint8)) if chunk.size else b""
            digest.update(view)
            f.write(view)
            written += len(view)
        if written != end - start:
            raise AssertionError(f"{name}: wrote {written} bytes, header says {end - start}")
        total += written
    return total, digest.hexdigest()


# 1 MB: an ARC prompt's capture (~1,000+ tokens x 1.8 KB for 0.5B) goes out uncopied, while a
# --positions last store's 1-token samples still reach the file ~500 at a time. 8 MB copied every
# ARC-sized sample once more; 1 MB wrote 1.25x faster inline here (docs/BENCHMARKS.md).
_COALESCE_BYTES = 1 << 20


def _coalesced(chunks: list[np.ndarray], dtype: np.dtype):
    """The chunks as contiguous arrays, small neighbours joined into ~1 MB pieces: one write and
    hash call per piece instead of per sample (``--positions last`` gives 1-token samples), while
    large chunks go out as they are, uncopied."""
    pending, pending_bytes = [], 0
    for chunk in chunks:
        chunk = np.ascontiguousarray(chunk, dtype=dtype)
        if chunk.nbytes >= _COALESCE_BYTES:
            if pending:
                yield np.concatenate(pending)
                pending, pending_bytes = [], 0
            yield chunk
            continue
        pending.append(chunk)
        pending_bytes += chunk.nbytes
        if pending_bytes >= _COALESCE_BYTES:
            yield np.concatenate(pending)
            pending, pending_bytes = [], 0
    if pending:
        yield np.concatenate(pending)


def parse_header(prefix: bytes, total_size: int | None = None) -> ShardHeader:
    """Parse a safetensors header from the first bytes of a file (JSON only: nothing executes).
    Raises ValueError if ``prefix`` is too short or malformed."""
    if len(prefix) < 8:
        raise ValueError("file shorter than a safetensors header")
    (n,) = struct.unpack("<Q", prefix[:8])
    if n > MAX_HEADER_BYTES:
        raise ValueError(f"header length {n} exceeds the 100 MB cap")
    if len(prefix) < 8 + n:
        raise HeaderTooShort(8 + n)
    try:
        header = json.loads(prefix[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"header is not JSON ({err})") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")  # noqa: TRY004 - bad data, not a bad call
    meta = header.pop("__metadata__", None) or {}
    tensors = {}
    data_start = 8 + n
    for name, t in header.items():
        try:
            dt = _NUMPY_DTYPE[t["dtype"]]
            shape = tuple(int(s) for s in t["shape"])
            a, b = (int(x) for x in t["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"tensor {name!r}: bad header entry") from None
        if b - a != int(np.prod(shape, dtype=np.int64)) * dt.itemsize or a < 0:
            raise ValueError(f"tensor {name!r}: offsets disagree with shape and dtype")
        if total_size is not None and data_start + b > total_size:
            raise ValueError(f"tensor {name!r}: extends past the end of the file")
        tensors[name] = TensorInfo(dt, shape, data_start + a, data_start + b)
    return ShardHeader(tensors, {str(k): str(v) for k, v in meta.items()}, data_start)


class HeaderTooShort(ValueError):
    """The prefix read was too short; ``needed`` bytes hold the whole header."""

    def __init__(self, needed: int):
        super().__init__(f"need {needed} bytes for the header")
        self.needed = needed
