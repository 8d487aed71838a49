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
    written in place, in blocks that stay in the core's cache through the ten passes: 2.3x faster
    than with a temporary per step, and 2.2x faster again than in place over a whole batch's
    million pairs; tests/features/test_hashing.py pins its values.)"""
    latent = np.asarray(latent)
    token_hash = np.asarray(token_hash, np.uint64)
    if latent.ndim != 1 or token_hash.shape != latent.shape:
        raise ValueError(f"latent_hashes takes one token hash per latent, 1-D: {token_hash.shape}, {latent.shape}")
    out = np.empty(len(latent), np.uint64)
    shifted = np.empty(min(_BLOCK, len(latent)), np.uint64)
    for lo in range(0, len(latent), _BLOCK):
        x = out[lo:lo + _BLOCK]
        tmp = shifted[:len(x)]
        x[...] = latent[lo:lo + _BLOCK]  # (int32 -> uint64: the latent's bits, as a cast would give them)
        x *= _GOLDEN
        x ^= token_hash[lo:lo + _BLOCK]
        for shift, multiplier in ((30, _M1), (27, _M2)):
            np.right_shift(x, np.uint64(shift), out=tmp)
            x ^= tmp
            x *= multiplier
        np.right_shift(x, np.uint64(31), out=tmp)
        x ^= tmp
        x >>= np.uint64(1)
    return out.view(np.int64)


_BLOCK = 1 << 15  # (pairs a block: 256 KB of uint64, twice, within a core's L2)
