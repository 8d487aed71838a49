"""The committed state of a store: its index files, read in name order (SPEC.md section 3).

A sample exists if and only if its key is in a committed index file. Should two index files ever
name the same key, the first one in name order owns it; the later ones keep their shards, but
readers skip those samples and `arclens verify` reports them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from arclens.errors import UserError
from arclens.store import fs as fsx
from arclens.store.format import INDEX_DIR, INDEX_SUFFIX, METADATA_FILE
from arclens.store.metadata import check_metadata


@dataclass(frozen=True)
class IndexEntry:
    name: str       # index file base name, e.g. "host-p0-4711-000003.json"
    shard: str      # shard path relative to the store root, e.g. "shards/host-p0-4711-000003.safetensors"
    sha256: str
    bytes: int
    n_tokens: int
    samples: tuple[str, ...]

    @classmethod
    def from_json(cls, name: str, raw: bytes) -> IndexEntry:
        try:
            d = json.loads(raw)
            entry = cls(name, str(d["shard"]), str(d["sha256"]), int(d["bytes"]), int(d["n_tokens"]),
                        tuple(str(k) for k in d["samples"]))
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"index/{name}: not a valid index file ({type(err).__name__}: {err})") from None
        if "/" not in entry.shard or ".." in entry.shard.split("/") or entry.shard.startswith("/"):
            raise ValueError(f"index/{name}: shard path {entry.shard!r} is not inside the store")
        return entry

    def to_json(self) -> dict:
        return {"shard": self.shard, "sha256": self.sha256, "bytes": self.bytes,
                "n_tokens": self.n_tokens, "samples": list(self.samples)}


@dataclass
class Committed:
    """Every valid index file in name order, and which one owns each key."""

    entries: list[IndexEntry]
    owner: dict[str, str] = field(default_factory=dict)           # key -> index name
    duplicates: list[tuple[str, str, str]] = field(default_factory=list)  # (key, owner, other)
    invalid: list[str] = field(default_factory=list)              # unreadable index files

    def owns(self, entry: IndexEntry, key: str) -> bool:
        return self.owner.get(key) == entry.name


def read_committed(fs, root: str) -> Committed:
    names = [n for n in fsx.list_names(fs, fsx.join(root, INDEX_DIR)) if n.endswith(INDEX_SUFFIX)]
    raw = _read_many(fs, [fsx.join(root, INDEX_DIR, n) for n in names])
    committed = Committed(entries=[])
    for name in names:
        try:
            entry = IndexEntry.from_json(name, raw[fsx.join(root, INDEX_DIR, name)])
        except ValueError as err:
            committed.invalid.append(str(err))
            continue
        committed.entries.append(entry)
        for key in entry.samples:
            first = committed.owner.setdefault(key, name)
            if first != name:
                committed.duplicates.append((key, first, name))
    return committed


def _read_many(fs, paths: list[str]) -> dict[str, bytes]:
    if not paths:
        return {}
    if fsx.is_local(fs):
        out = {}
        for p in paths:
            with open(p, "rb") as f:
                out[p] = f.read()
        return out
    # One concurrent batch on async filesystems (gcsfs/s3fs), instead of a round trip per file.
    got = fsx.with_retries("read index files", lambda _i: fs.cat(paths, on_error="raise"))
    return {p: got[p] if p in got else got[fs._strip_protocol(p)] for p in paths}


def read_metadata(fs, root: str, dest: str) -> dict:
    path = fsx.join(root, METADATA_FILE)
    try:
        raw = fsx.read_bytes(fs, path)
    except FileNotFoundError:
        raise UserError(f"{dest}: not an activation store (no {METADATA_FILE})") from None
    try:
        meta = json.loads(raw)
        check_metadata(meta, f"{dest}/{METADATA_FILE}")
    except ValueError as err:
        raise UserError(f"{dest}/{METADATA_FILE}: {err}") from None
    return meta


def committed_keys(dest: str, storage_options: dict | None = None) -> set[str]:
    """Keys of every committed sample: exactly what a resumed run must skip. Empty if the store
    does not exist yet."""
    fs, root = fsx.get_fs(dest, storage_options)
    return set(read_committed(fs, root).owner)
