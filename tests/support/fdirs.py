"""Two FDIRs that must be the same: every file, with `created_at` left out and latents.safetensors
compared array by array (safetensors writes its metadata map in no fixed order)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def assert_same_fdir(got: Path, want: Path, label: str = "") -> None:
    from safetensors.numpy import load_file

    for name in ("examples.jsonl", "samples.jsonl"):
        assert (got / name).read_bytes() == (want / name).read_bytes(), f"{label}: {name}"
    a, b = (json.loads((d / "features.json").read_text()) for d in (got, want))
    assert a.pop("created_at") and b.pop("created_at")
    assert a == b, f"{label}: features.json"
    a, b = (load_file(str(d / "latents.safetensors")) for d in (got, want))
    assert sorted(a) == sorted(b), label
    for name in b:
        assert a[name].dtype == b[name].dtype, f"{label}: {name}"
        np.testing.assert_array_equal(a[name], b[name], err_msg=f"{label}: {name}")
