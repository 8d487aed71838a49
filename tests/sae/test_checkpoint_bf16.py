"""A checkpoint keeps bf16 arrays (the carry of a bf16 store or of bf16 captures on the fly) bit
for bit: safetensors.numpy cannot read BF16, so they are saved as their bits and named in the header."""

from __future__ import annotations

import ml_dtypes
import numpy as np

from arclens.sae import checkpoint as ckpt
from arclens.store import fs as fsx


def test_bf16_arrays_round_trip_bit_for_bit(tmp_path):
    fs, root = fsx.get_fs(str(tmp_path))
    rng = np.random.default_rng(0)
    carry = rng.normal(size=(5, 3)).astype(ml_dtypes.bfloat16)
    arrays = {"data/carry/h": carry, "sae0/w": rng.normal(size=(2, 2)).astype(np.float32), "sae0/n": np.int32(7)}
    ckpt.save(fs, root, 3, arrays, {"settings": {"a": 1}, "position": {"epoch": 0}})
    header, got = ckpt.load_latest(fs, root)
    assert header["step"] == 3 and header["position"] == {"epoch": 0}
    assert got["data/carry/h"].dtype == np.dtype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(got["data/carry/h"].view(np.uint16), carry.view(np.uint16))
    assert got["sae0/w"].dtype == np.float32 and np.array_equal(got["sae0/w"], arrays["sae0/w"])
    assert got["sae0/n"].shape == () and int(got["sae0/n"]) == 7
