"""Stores for the claim-protocol tests: a local folder and a bucket on moto's S3 server."""

from __future__ import annotations

import pytest

from servers import MotoS3


@pytest.fixture(scope="session")
def moto_s3():
    server = MotoS3()
    yield server
    server.stop()


@pytest.fixture(params=["local", "s3"])
def store_location(request, tmp_path):
    """``(dest, storage_options, env)`` for a fresh, empty store."""
    if request.param == "local":
        return str(tmp_path / "store"), None, {}
    remote = request.getfixturevalue("moto_s3").new_bucket()
    return remote.url, remote.storage_options, remote.env
