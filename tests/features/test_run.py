"""The features command's defaults (features/run.py)."""

from __future__ import annotations

from arclens.features.run import default_store_batch_tokens


def test_store_batches_are_larger_on_an_accelerator_as_far_as_d_sae_allows():
    assert default_store_batch_tokens(16384, "cpu") == default_store_batch_tokens(64, "cpu") == 4096
    assert default_store_batch_tokens(2048, "gpu") == default_store_batch_tokens(16384, "tpu") == 32768
    assert default_store_batch_tokens(16385, "gpu") == 16384  # (past 2 GiB of float32 pre-activations)
    assert default_store_batch_tokens(65536, "gpu") == 8192
    assert default_store_batch_tokens(1 << 20, "gpu") == 4096  # (never below the CPU's)
