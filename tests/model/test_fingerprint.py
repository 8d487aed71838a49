"""The weights fingerprint (model/fingerprint.py): content-based, path-independent, cheap.

Each property the module docstring claims is checked here, the blind spot included: a change
between sampled blocks goes unnoticed, a change in a sampled block does not.
"""

from __future__ import annotations

import json
import shutil
import struct
import time

import numpy as np
import pytest

from arclens.errors import UserError
from arclens.model import fingerprint as fp
from arclens.model.fingerprint import BLOCK_BYTES, BLOCKS_PER_FILE, block_offsets, weights_fingerprint
from arclens.model.random_checkpoint import write_random_model


def _synthetic(dirpath, data_bytes: int, sparse: bool = False, config: dict | None = None):
    """A checkpoint directory with one safetensors file holding one uint8 tensor of
    ``data_bytes`` (random bytes, or a sparse hole of zeros for sizes too big to write)."""
    dirpath.mkdir(parents=True, exist_ok=True)
    (dirpath / "config.json").write_text(json.dumps(config or {"model_type": "qwen2", "hidden_size": 64}))
    header = json.dumps({"__metadata__": {"format": "pt"},
                         "w": {"dtype": "U8", "shape": [data_bytes], "data_offsets": [0, data_bytes]}}).encode()
    header += b" " * ((-(8 + len(header))) % 8)
    path = dirpath / "model.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        if sparse:
            f.truncate(8 + len(header) + data_bytes)
        else:
            f.write(np.random.default_rng(0).integers(0, 256, data_bytes, dtype=np.uint8).tobytes())
    return dirpath, 8 + len(header)


def _flip_byte(path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def test_same_weights_anywhere_get_the_same_fingerprint(tiny_model_dir, tmp_path):
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(tiny_model_dir, copy)
    a = weights_fingerprint(tiny_model_dir)
    assert a.startswith("sampled-sha256-v1:") and len(a.partition(":")[2]) == 64
    assert weights_fingerprint(copy) == a
    assert weights_fingerprint(str(copy)) == a  # a str and a Path alike
    # Bookkeeping that re-saves change is not part of it; neither are the tokenizer's files.
    cfg = json.loads((copy / "config.json").read_text())
    cfg["transformers_version"] = "9.9.9"
    cfg["_name_or_path"] = "/somewhere/else"
    cfg["rope_parameters"] = {"rope_theta": cfg.pop("rope_theta"), "rope_type": "default"}  # 5.x layout
    (copy / "config.json").write_text(json.dumps(cfg, indent=4))
    (copy / "README.md").write_text("moved")
    assert weights_fingerprint(copy) == a


def test_other_seed_same_config_gets_another_fingerprint(tiny_model_dir, tmp_path):
    other = write_random_model(tmp_path / "seed1", preset="tiny", seed=1)
    assert json.loads((other / "config.json").read_text()) == json.loads((tiny_model_dir / "config.json").read_text())
    assert (other / "model.safetensors").stat().st_size == (tiny_model_dir / "model.safetensors").stat().st_size
    assert weights_fingerprint(other) != weights_fingerprint(tiny_model_dir)


def test_a_model_defining_config_field_changes_it(tiny_model_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    before = weights_fingerprint(copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["rms_norm_eps"] = 1e-5
    (copy / "config.json").write_text(json.dumps(cfg))
    assert weights_fingerprint(copy) != before


def test_sharded_checkpoint(tmp_path):
    one = write_random_model(tmp_path / "one", preset="tiny", seed=3)
    many = write_random_model(tmp_path / "many", preset="tiny", seed=3, max_shard_bytes=200_000)
    files = sorted(p.name for p in many.glob("*.safetensors"))
    assert len(files) > 2
    copy = tmp_path / "copy"
    shutil.copytree(many, copy)
    assert weights_fingerprint(copy) == weights_fingerprint(many)
    # Same tensors in another file layout: refused rather than guessed equal (documented).
    assert weights_fingerprint(many) != weights_fingerprint(one)
    (copy / files[1]).unlink()
    with pytest.raises(UserError, match=files[1]):
        weights_fingerprint(copy)


def test_reads_a_bounded_sample_of_a_huge_file(tmp_path, monkeypatch):
    # 15 GB, the size of a 7B checkpoint, as a sparse file: only the sampled blocks are read.
    ckpt, data_start = _synthetic(tmp_path / "big", 15 * 10**9, sparse=True)
    read = []
    real_open = open

    class Counting:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def read(self, n=-1):
            assert n >= 0, "never reads a file to its end"
            data = self.f.read(n)
            read.append(len(data))
            return data

        def __getattr__(self, name):
            return getattr(self.f, name)

    monkeypatch.setattr(fp, "open", lambda *a, **k: Counting(real_open(*a, **k)), raising=False)
    t0 = time.perf_counter()
    fingerprint = weights_fingerprint(ckpt)
    elapsed = time.perf_counter() - t0
    assert sum(read) == 8 + (data_start - 8) + BLOCKS_PER_FILE * BLOCK_BYTES
    assert elapsed < 1.0, elapsed
    assert fingerprint.startswith("sampled-sha256-v1:")


def test_block_offsets_cover_small_files_and_spread_over_large_ones():
    assert block_offsets(100, 100) == []
    assert block_offsets(8, 8 + 3 * BLOCK_BYTES + 1) == [8 + i * BLOCK_BYTES for i in range(4)]
    end = 8 + 100 * BLOCK_BYTES + 5
    offs = block_offsets(8, end)
    assert len(offs) == BLOCKS_PER_FILE and offs[0] == 8 and offs[-1] + BLOCK_BYTES == end
    gaps = np.diff(offs)
    assert gaps.min() >= BLOCK_BYTES and gaps.max() - gaps.min() <= 1


def test_what_it_detects_and_its_blind_spot(tmp_path):
    ckpt, data_start = _synthetic(tmp_path / "m", 64 * BLOCK_BYTES)
    path = ckpt / "model.safetensors"
    size = path.stat().st_size
    base = weights_fingerprint(ckpt)
    offs = block_offsets(data_start, size)

    _flip_byte(path, offs[5] + 17)  # inside a sampled block: detected
    assert weights_fingerprint(ckpt) != base
    _flip_byte(path, offs[5] + 17)
    assert weights_fingerprint(ckpt) == base

    gap = offs[5] + BLOCK_BYTES + 10  # between two sampled blocks: the documented blind spot
    assert gap < offs[6]
    _flip_byte(path, gap)
    assert weights_fingerprint(ckpt) == base
    _flip_byte(path, gap)

    with open(path, "ab") as f:  # a longer file (the header no longer matches the size)
        f.write(b"\0" * 8)
    assert weights_fingerprint(ckpt) != base


def test_unreadable_checkpoints_are_user_errors(tmp_path, tiny_model_dir):
    with pytest.raises(UserError, match="config.json"):
        weights_fingerprint(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match="model.safetensors"):
        weights_fingerprint(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(UserError, match="not a safetensors file"):
        weights_fingerprint(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", 10**6) + b"{}")
    with pytest.raises(UserError, match="header length"):
        weights_fingerprint(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": {"w": "../x.safetensors"}}')
    with pytest.raises(UserError, match="not a file name"):
        weights_fingerprint(tmp_path)
