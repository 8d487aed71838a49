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

# Fields that legitimately differ between the run that created a store and one resuming it.
VOLATILE_METADATA_FIELDS = ("created_at", "arclens_version")

# Sections that a content fingerprint identifies better than the spelling they were given under
# (section -> its spelling field). When both sides carry comparable ``fingerprint``s (same scheme),
# the spelling is not compared: ``--model .demo/m`` resumes a store made with ``--model
# /abs/.demo/m``, a hub id resumes one made with its snapshot directory, ``--tasks ./x.json`` one
# made with ``--tasks /abs/x.json``. When either side lacks one (a store made before fingerprints),
# the spelling is compared as before and the fingerprint is not. docs/STORE.md, "Resume".
FINGERPRINTED_SECTIONS = {"model": "name", "tasks": "source"}
FINGERPRINT_FIELD = "fingerprint"

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


# ---------------------------------------------------------------------------------------------
# metadata


def metadata_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted names of the fields where two metadata dicts differ (volatile fields skipped; a
    fingerprinted section compared by its fingerprint, not its spelling, see
    ``FINGERPRINTED_SECTIONS``)."""
    if not prefix:
        old, new = _identity_views(old, new)
    diffs = []
    for k in sorted(set(old) | set(new)):
        if not prefix and k in VOLATILE_METADATA_FIELDS:
            continue
        name = f"{prefix}{k}"
        if k not in old or k not in new:
            diffs.append(name)
        elif isinstance(old[k], dict) and isinstance(new[k], dict):
            diffs += metadata_differences(old[k], new[k], prefix=f"{name}.")
        elif _normalise(old[k]) != _normalise(new[k]):
            diffs.append(name)
    return diffs


def fingerprint_scheme(fingerprint) -> str | None:
    """``"scheme"`` of a ``"scheme:hex"`` fingerprint; None for anything else (absent, malformed)."""
    if isinstance(fingerprint, str) and ":" in fingerprint:
        scheme, _, value = fingerprint.partition(":")
        if scheme and value:
            return scheme
    return None


def fingerprints_comparable(a, b) -> bool:
    """Both are fingerprints of the same scheme (another scheme may hash other things)."""
    scheme = fingerprint_scheme(a)
    return scheme is not None and scheme == fingerprint_scheme(b)


def _identity_views(old: dict, new: dict) -> tuple[dict, dict]:
    """Copies of two metadata dicts with, per fingerprinted section, either the spelling field
    (both sides fingerprinted alike) or the fingerprint field (otherwise) left out."""
    old, new = dict(old), dict(new)
    for section, spelling in FINGERPRINTED_SECTIONS.items():
        a, b = old.get(section), new.get(section)
        if not (isinstance(a, dict) and isinstance(b, dict)):
            continue
        a, b = dict(a), dict(b)
        drop = spelling if fingerprints_comparable(a.get(FINGERPRINT_FIELD), b.get(FINGERPRINT_FIELD)) else FINGERPRINT_FIELD
        a.pop(drop, None)
        b.pop(drop, None)
        old[section], new[section] = a, b
    return old, new


def _normalise(x):
    # JSON round trip: tuples vs lists and int vs float 1.0 must not count as differences.
    return json.loads(json.dumps(x, sort_keys=True))


def describe_difference(old: dict, new: dict, field: str) -> str:
    def get(d):
        for part in field.split("."):
            if not isinstance(d, dict) or part not in d:
                return "<absent>"
            d = d[part]
        return json.dumps(_short(d) if part == FINGERPRINT_FIELD else d)[:80]

    return f"{field}: store has {get(old)}, this run has {get(new)}"


def _short(fingerprint):
    # scheme and 12 hex digits: enough to tell two apart in a one-line message
    scheme = fingerprint_scheme(fingerprint)
    return f"{scheme}:{fingerprint.partition(':')[2][:12]}" if scheme else fingerprint


def describe_differences(old: dict, new: dict, diffs: list[str], dest: str) -> str:
    """The one-line refusal for a resume into ``dest`` whose settings differ in ``diffs``
    (``metadata_differences(old, new)``, non-empty). Another model (weights or tokenizer) gets a message of its own:
    that is the mistake that would silently mix two models' activations into one store."""
    others = [d for d in diffs if not d.startswith("model.")]
    also = f" Other settings differ too: {', '.join(others)}." if others else ""
    if f"model.{FINGERPRINT_FIELD}" in diffs:
        m_old, m_new = old.get("model") or {}, new.get("model") or {}
        was, now = m_old.get("name"), m_new.get("name")
        fp_old, fp_new = _short(m_old.get(FINGERPRINT_FIELD)), _short(m_new.get(FINGERPRINT_FIELD))
        if was == now:
            what = (f"the model at {now} (its weights or tokenizer) changed since this store was created "
                    f"(model fingerprint {fp_old} then, {fp_new} now)")
        else:
            what = (f"this store was created with the model {was} (model fingerprint {fp_old}), and "
                    f"{now} holds other weights or another tokenizer ({fp_new})")
        return (f"{dest}: {what}; resuming would mix activations of two models. Use another --out, or "
                f"the original model to resume.{also}")
    details = "; ".join(describe_difference(old, new, d) for d in diffs[:6])
    return (f"{dest} already holds a store with other settings ({', '.join(diffs)}): {details}. "
            "Use another --out, or the original settings to resume.")


def check_metadata(meta: dict, where: str) -> None:
    """The fields every reader relies on; raises ValueError naming the first bad one."""
    if meta.get("format") != FORMAT:
        raise ValueError(f"{where}: format is {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("version") != VERSION:
        raise ValueError(f"{where}: version {meta.get('version')!r} is not supported (expected {VERSION})")
    hooks = meta.get("hooks")
    if not isinstance(hooks, list) or not hooks or not all(isinstance(h, str) for h in hooks):
        raise ValueError(f"{where}: hooks must be a non-empty list of hook names")
    if len(set(hooks)) != len(hooks) or set(hooks) & set(COLUMNS):
        raise ValueError(f"{where}: hooks must be distinct and not named like a column")
    if meta.get("dtype") not in ACTIVATION_DTYPES:
        raise ValueError(f"{where}: dtype must be one of {', '.join(ACTIVATION_DTYPES)}")
    if not isinstance(meta.get("d_model"), int) or meta["d_model"] <= 0:
        raise ValueError(f"{where}: d_model must be a positive integer")


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
