"""`arclens verify`: check every committed shard against its index file and the metadata.

A problem is anything that breaks a reader's guarantees: a missing or altered shard (bytes,
sha256), a shard whose tensors or sample table disagree with its index file or with
metadata.json, or an unreadable index file. Reported but not problems, because readers never
see them: a key committed twice (SPEC section 3: readers take the first index file in name
order; a frozen fleet worker or two runs started at once can leave one), and uncommitted
leftovers of interrupted runs.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from arclens.store import fs as fsx
from arclens.store.format import COLUMNS, SHARD_SUFFIX, SHARDS_DIR, activation_dtype
from arclens.store.index import IndexEntry, read_committed, read_metadata

REQUIRED_SAMPLE_FIELDS = ("key", "task_id", "test_index", "augmentation", "prompt_tokens", "stored_tokens")


@dataclass
class VerifyReport:
    dest: str
    index_files: int = 0
    samples: int = 0
    tokens: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)
    duplicates: list[tuple[str, str, str]] = field(default_factory=list)
    uncommitted: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_store(dest: str, storage_options: dict | None = None, workers: int = 4) -> VerifyReport:
    fs, root = fsx.get_fs(dest, storage_options)
    meta = read_metadata(fs, root, dest)
    committed = read_committed(fs, root)
    report = VerifyReport(dest, index_files=len(committed.entries) + len(committed.invalid))
    report.problems += committed.invalid
    report.duplicates = list(committed.duplicates)
    with cf.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(lambda e: check_shard(fs, root, e, meta), committed.entries))
    for entry, problems in zip(committed.entries, results):
        report.problems += problems
        report.bytes += entry.bytes
    report.samples = len(committed.owner)
    report.tokens = _visible_tokens(committed, fs, root)
    referenced = {e.shard for e in committed.entries}
    for name in fsx.list_names(fs, fsx.join(root, SHARDS_DIR)):
        if name.endswith(SHARD_SUFFIX) and f"{SHARDS_DIR}/{name}" not in referenced:
            report.uncommitted.append(f"{SHARDS_DIR}/{name}")
    return report


def _visible_tokens(committed, fs, root) -> int:
    from arclens.store.reader import ShardFile, ShardView

    total = 0
    for entry in committed.entries:
        if all(committed.owns(entry, k) for k in entry.samples):
            total += entry.n_tokens
            continue
        owned = frozenset(r for r, k in enumerate(entry.samples) if committed.owns(entry, k))
        try:
            total += ShardView(entry, ShardFile(fs, fsx.join(root, entry.shard)), owned).n_tokens
        except (OSError, ValueError, KeyError):
            pass  # already reported as a problem of that shard
    return total


def check_shard(fs, root: str, entry: IndexEntry, meta: dict) -> list[str]:
    """Every disagreement between one shard, its index file and the metadata (empty: fine)."""
    where = f"{entry.shard} (index/{entry.name})"
    path = fsx.join(root, entry.shard)
    try:
        size, sha = _size_and_sha256(fs, path)
    except FileNotFoundError:
        return [f"{where}: shard file is missing"]
    except OSError as err:
        return [f"{where}: cannot read the shard ({err})"]
    problems = []
    if size != entry.bytes:
        problems.append(f"{where}: {size} bytes, index says {entry.bytes}")
    if sha != entry.sha256:
        problems.append(f"{where}: sha256 {sha[:16]}... differs from the index's {entry.sha256[:16]}...")
    from arclens.store.reader import ShardFile

    shard = ShardFile(fs, path)
    try:
        header = shard.header
    except (ValueError, KeyError) as err:
        return problems + [f"{where}: not a readable safetensors file ({err})"]
    problems += _check_layout(where, header, size)
    problems += _check_tensors(where, header, entry, meta)
    try:
        table = json.loads(header.metadata["samples"])
        if not isinstance(table, list):
            raise ValueError("not a list")  # noqa: TRY004 - caught just below
    except (KeyError, ValueError) as err:
        return problems + [f"{where}: no readable `samples` table in the metadata ({err})"]
    problems += _check_table(where, table, entry)
    if not problems:
        stored = [int(s["stored_tokens"]) for s in table]
        column = shard.read(["sample"])["sample"]
        if not np.array_equal(column, np.repeat(np.arange(len(table), dtype=np.int32), stored)):
            problems.append(f"{where}: the `sample` column does not match the sample table")
    return problems


def _size_and_sha256(fs, path: str, chunk: int = 1 << 24) -> tuple[int, str]:
    h, size = hashlib.sha256(), 0
    opener = open if fsx.is_local(fs) else fs.open
    with opener(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


def _check_layout(where, header, size) -> list[str]:
    spans = sorted((t.start, t.end, n) for n, t in header.tensors.items())
    pos = header.data_start
    for start, end, name in spans:
        if start != pos:
            return [f"{where}: tensor {name} does not follow the previous one (gap or overlap)"]
        pos = end
    return [] if pos == size else [f"{where}: {size - pos} bytes after the last tensor"]


def _check_tensors(where, header, entry, meta) -> list[str]:
    problems = []
    hooks, d_model = meta["hooks"], int(meta["d_model"])
    want = {h: (activation_dtype(meta["dtype"]), (entry.n_tokens, d_model)) for h in hooks}
    want |= {c: (dt, (entry.n_tokens,)) for c, dt in COLUMNS.items()}
    got = header.tensors
    if set(got) != set(want):
        problems.append(f"{where}: tensors {sorted(set(got) - set(want))} unexpected, "
                        f"{sorted(set(want) - set(got))} missing")
    for name in set(got) & set(want):
        dt, shape = want[name]
        if got[name].dtype != dt or got[name].shape != shape:
            problems.append(f"{where}: {name} is {got[name].dtype}{list(got[name].shape)}, "
                            f"expected {dt}{list(shape)} (index n_tokens={entry.n_tokens})")
    return problems


def _check_table(where, table, entry) -> list[str]:
    problems = []
    bad = [i for i, s in enumerate(table) if not isinstance(s, dict) or any(f not in s for f in REQUIRED_SAMPLE_FIELDS)]
    if bad:
        return [f"{where}: sample table rows {bad[:5]} lack fields of {', '.join(REQUIRED_SAMPLE_FIELDS)}"]
    keys = tuple(s["key"] for s in table)
    if keys != entry.samples:
        problems.append(f"{where}: the shard's sample keys differ from its index file's")
    n = sum(int(s["stored_tokens"]) for s in table)
    if n != entry.n_tokens:
        problems.append(f"{where}: sample table holds {n} tokens, index says {entry.n_tokens}")
    return problems
