"""A fixed 64-bit hash of (sample key, position, latent): the deterministic "random" draw of the
quantile examples (docs/FEATURES.md). It depends on the sample's key and position only, never on
where the sample sits in a store, so the same samples give the same examples in any store.

splitmix64's finaliser (Steele, Lea & Flood 2014), vectorised over numpy uint64 (which wraps).
"""

from __future__ import annotations

import hashlib

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def mix64(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def key_hash(key: str) -> np.uint64:
    return np.uint64(int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little"))


def token_hashes(key: str, positions: np.ndarray) -> np.ndarray:
    """uint64 [n]: one per token of a sample."""
    return hash_tokens(key_hash(key), positions)


def hash_tokens(key_hashes, positions: np.ndarray) -> np.ndarray:
    """uint64 [n]: `token_hashes` of tokens of several samples, given each token's `key_hash`."""
    with np.errstate(over="ignore"):
        return mix64(np.asarray(key_hashes, np.uint64) ^ mix64(np.asarray(positions, np.uint64) + _GOLDEN))


def latent_hashes(token_hash: np.ndarray, latent: np.ndarray) -> np.ndarray:
    """int64 in [0, 2**63) for (token, latent) pairs: the sort key of the quantile draw,
    ``mix64(token_hash ^ latent * golden) >> 1``. (It runs on every firing pair, so it is `mix64`
    written in place: 2.3x faster than with a temporary per step; tests/features/test_hashing.py.)"""
    x = np.asarray(latent).astype(np.uint64)
    x *= _GOLDEN
    x ^= np.asarray(token_hash, np.uint64)
    shifted = np.empty_like(x)
    for shift, multiplier in ((30, _M1), (27, _M2)):
        np.right_shift(x, np.uint64(shift), out=shifted)
        x ^= shifted
        x *= multiplier
    np.right_shift(x, np.uint64(31), out=shifted)
    x ^= shifted
    x >>= np.uint64(1)
    return x.view(np.int64)
