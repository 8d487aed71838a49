"""Reading a whole store back, for comparisons."""

from __future__ import annotations

import numpy as np


def stored(dest, storage_options=None) -> dict[str, tuple[dict, dict[str, np.ndarray]]]:
    """key -> (sample table entry, arrays) for every committed sample; a key stored twice fails."""
    import arclens

    store = arclens.open_store(str(dest), storage_options=storage_options)
    out = {}
    for sample, arrays in store.samples():
        assert sample["key"] not in out, f"{sample['key']} stored twice"
        out[sample["key"]] = (sample, {k: np.array(v) for k, v in arrays.items()})
    return out
