"""The features command's defaults (features/run.py)."""

from __future__ import annotations

from arclens.features.run import default_store_batch_tokens


def test_store_batches_are_larger_on_an_accelerator_as_far_as_d_sae_allows():
    assert default_store_batch_tokens(16384, "cpu") == default_store_batch_tokens(64, "cpu") == 4096
    assert default_store_batch_tokens(2048, "gpu") == default_store_batch_tokens(16384, "tpu") == 32768
    assert default_store_batch_tokens(16385, "gpu") == 16384  # (past 2 GiB of float32 pre-activations)
    assert default_store_batch_tokens(65536, "gpu") == 8192
    assert default_store_batch_tokens(1 << 20, "gpu") == 4096  # (never below the CPU's)


def test_fold_workers_take_the_cores_the_pass_leaves_on_an_accelerator():
    from arclens.features.accumulate import fold_workers_for

    assert fold_workers_for(None, 2048, cores=16, platform="cpu") == 1  # (the CPU's cores encode)
    assert fold_workers_for(None, 2048, cores=16, platform="gpu") == 12  # (all but the parent's four threads)
    assert fold_workers_for(None, 2048, cores=8, platform="tpu") == 4
    assert fold_workers_for(None, 2048, cores=4, platform="gpu") == 2  # (one per two cores at least)
    assert fold_workers_for(None, 2048, cores=1, platform="gpu") == 1
    assert fold_workers_for(None, 2048, cores=96, platform="gpu") == 16
    assert fold_workers_for(None, 6, cores=16, platform="gpu") == 6  # (never more than latents)
    assert fold_workers_for(3, 2048, cores=16, platform="cpu") == 3  # (asked for: as asked)
