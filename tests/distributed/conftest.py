"""Stores for the claim-protocol tests: a local folder and a bucket on moto's S3 server."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["local", "s3"])
def store_location(request, tmp_path):
    """``(dest, storage_options, env)`` for a fresh, empty store (s3: tests/conftest.py's moto)."""
    return _location(request, tmp_path, request.param)


@pytest.fixture(params=["local", "s3", "gcs"])
def any_store_location(request, tmp_path):
    """Also fake-gcs-server, for the tests of the create-only race itself."""
    return _location(request, tmp_path, request.param)


def _location(request, tmp_path, backend):
    if backend == "local":
        return str(tmp_path / "store"), None, {}
    remote = request.getfixturevalue(f"{backend}_remote")
    return remote.url, remote.storage_options, remote.env
