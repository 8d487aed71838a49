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
# No persistent XLA cache shared between tests (and their subprocesses); test_compile_cache.py
# turns it on in a folder of its own.
os.environ.setdefault("ARCLENS_COMPILE_CACHE", "off")

import pytest
from hypothesis import settings

# CI runs the same hypothesis examples every time (a red CI always means a change broke
# something); a developer's `make test` draws new ones each run, to keep finding cases.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A RANDOM tiny Qwen2 checkpoint with tokenizer and chat template (`arclens random-model`)."""
    from arclens.model.random_checkpoint import write_random_model

    return write_random_model(tmp_path_factory.mktemp("models") / "tiny", preset="tiny", seed=0)


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


# --- object-store emulators on loopback (tests/servers.py; owned by the store) -----------------


@pytest.fixture(scope="session")
def moto_server():
    """moto's S3 server on 127.0.0.1 for the whole session; use ``s3_remote`` for a bucket."""
    from tests.support.servers import MotoS3

    server = MotoS3()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def fake_gcs_server(tmp_path_factory):
    """fake-gcs-server on 127.0.0.1 for the whole session; use ``gcs_remote`` for a bucket."""
    from tests.support.servers import FakeGcs

    server = FakeGcs(tmp_path_factory.mktemp("fake-gcs") / "server.log")
    yield server
    server.stop()


@pytest.fixture
def s3_remote(moto_server):
    """A fresh bucket: ``.url`` (s3://bucket/run), ``.storage_options``, ``.env`` for the CLI."""
    return moto_server.new_bucket()


@pytest.fixture
def gcs_remote(fake_gcs_server):
    """A fresh bucket: ``.url`` (gs://bucket/run), ``.storage_options``, ``.env`` for the CLI."""
    return fake_gcs_server.new_bucket()


@pytest.fixture(params=["s3", "gcs"])
def faulty_remote(request, moto_server, fake_gcs_server):
    """(Remote, FaultProxy): a fresh bucket reached through a proxy that injects faults."""
    from tests.support.servers import FaultProxy

    server = moto_server if request.param == "s3" else fake_gcs_server
    proxy = FaultProxy(server.endpoint)
    yield server.new_bucket(endpoint=proxy.endpoint), proxy
    proxy.stop()
