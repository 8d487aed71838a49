"""Stores for the claim-protocol tests: a local folder and a bucket on moto's S3 server."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["local", "s3"])
def store_location(request, tmp_path):
    """``(dest, storage_options, env)`` for a fresh, empty store (s3: tests/conftest.py's moto)."""
    if request.param == "local":
        return str(tmp_path / "store"), None, {}
    remote = request.getfixturevalue("s3_remote")
    return remote.url, remote.storage_options, remote.env
