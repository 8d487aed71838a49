"""Fixtures shared by every test package.

Nothing here downloads anything: checkpoints are written locally by `arclens random-model`, or by
transformers' own `save_pretrained` where a test needs a shape the presets do not have.
"""

from __future__ import annotations

import os

# Tests compare float32 numbers with transformers; keep XLA's CPU matmuls exact and quiet.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A RANDOM tiny Qwen2 checkpoint with tokenizer and chat template (`arclens random-model`)."""
    from arclens.model.random_checkpoint import write_random_model

    return write_random_model(tmp_path_factory.mktemp("models") / "tiny", preset="tiny", seed=0)


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))
