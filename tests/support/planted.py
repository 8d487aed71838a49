"""Synthetic activation stores with a planted dictionary: the ground truth an SAE should recover.

Each token is a sparse non-negative combination of ``n_atoms`` random unit vectors in ``d``
dimensions, plus a fixed offset (real activations have a large mean, which ``b_dec`` absorbs):

    x = offset + sum_i c_i a_i,   atom i active with probability p_i, c_i ~ U(coef_lo, coef_hi)

The probabilities are uniform, or Zipf(alpha) over the atoms' ranks (a few atoms fire on many
tokens, most on few, as in real models), scaled so that ``per_token`` atoms are active per token
on average. A transcoder store also has a second hook ``y = sum_i c_i b_i`` with its own atoms
``b_i`` and the same coefficients, so the map x -> y has a known sparse factorisation.

``write_planted_store`` writes a real activation store (SPEC.md section 3) through StoreWriter, so
training from it exercises the same reader path users run. Everything is a function of the seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

HOOK = "blocks.0.hook_resid_post"
HOOK_IN = "blocks.0.hook_resid_mid"
HOOK_OUT = "blocks.0.hook_mlp_out"


@dataclass(frozen=True)
class PlantedDictionary:
    atoms: np.ndarray  # [n_atoms, d], unit rows
    freq: np.ndarray  # [n_atoms], probability that each atom is active on a token
    offset: np.ndarray  # [d]
    out_atoms: np.ndarray | None = None  # [n_atoms, d] for a transcoder store
    coef: tuple[float, float] = (0.5, 2.5)

    @property
    def n_atoms(self) -> int:
        return self.atoms.shape[0]

    @property
    def d(self) -> int:
        return self.atoms.shape[1]


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_dictionary(n_atoms: int, d: int, *, seed: int = 0, zipf: float | None = None, per_token: float = 8.0,
                    offset_norm: float = 2.0, transcoder: bool = False, coef=(0.5, 2.5)) -> PlantedDictionary:
    rng = np.random.default_rng([seed, 1])
    atoms = unit_rows(rng.standard_normal((n_atoms, d)))
    if zipf is None:
        weights = np.ones(n_atoms)
    else:
        weights = 1.0 / np.arange(1, n_atoms + 1) ** zipf
    freq = np.minimum(weights * per_token / weights.sum(), 1.0)
    offset = unit_rows(rng.standard_normal(d)) * offset_norm
    out_atoms = unit_rows(rng.standard_normal((n_atoms, d))) if transcoder else None
    return PlantedDictionary(atoms, freq, offset, out_atoms, tuple(coef))


def sample_tokens(dic: PlantedDictionary, n: int, rng: np.random.Generator, chunk: int = 8192):
    """``(x [n, d], y [n, d] or None)``: ``n`` tokens drawn from the dictionary."""
    xs, ys = [], []
    atoms = dic.atoms.astype(np.float32)
    out_atoms = dic.out_atoms.astype(np.float32) if dic.out_atoms is not None else None
    freq = dic.freq.astype(np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        active = rng.random((m, dic.n_atoms), dtype=np.float32) < freq
        coefs = np.zeros((m, dic.n_atoms), np.float32)
        coefs[active] = rng.uniform(dic.coef[0], dic.coef[1], size=int(active.sum())).astype(np.float32)
        xs.append(coefs @ atoms + dic.offset.astype(np.float32))
        if out_atoms is not None:
            ys.append(coefs @ out_atoms)
    x = np.concatenate(xs)
    y = np.concatenate(ys) if ys else None
    return x, y


def write_planted_store(dest, dic: PlantedDictionary, n_tokens: int, *, seed: int = 0, tokens_per_sample: int = 256,
                        shard_bytes: int = 8 << 20, dtype: str = "float32", hook: str = HOOK,
                        storage_options=None) -> list[str]:
    """An activation store at ``dest`` holding ``n_tokens`` planted tokens (the transcoder
    dictionary's two hooks, else ``hook``). Returns the hooks written."""
    from arclens.store.writer import StoreWriter, open_or_create_store

    hooks = [HOOK_IN, HOOK_OUT] if dic.out_atoms is not None else [hook]
    meta = {
        "model": {"name": "planted-dictionary", "hidden_size": dic.d, "num_hidden_layers": 1, "dtype": "float32"},
        "hooks": hooks,
        "dtype": dtype,
        "d_model": dic.d,
        "positions": "all",
        "prompt": {"version": "planted", "encoder": "none", "predictions_per_task": 1, "seed": seed,
                   "with_answer": False},
        "tasks": {"source": f"planted n_atoms={dic.n_atoms} d={dic.d} seed={seed}", "count": 0},
    }
    open_or_create_store(str(dest), meta, storage_options=storage_options)
    rng = np.random.default_rng([seed, 2])
    with StoreWriter(str(dest), "planted", shard_bytes=shard_bytes, storage_options=storage_options) as w:
        i = 0
        for start in range(0, n_tokens, 65536):
            x_all, y_all = sample_tokens(dic, min(65536, n_tokens - start), rng)
            for s in range(0, len(x_all), tokens_per_sample):
                x = x_all[s : s + tokens_per_sample]
                n = len(x)
                arrays = {hooks[0]: x}
                if y_all is not None:
                    arrays[hooks[1]] = y_all[s : s + tokens_per_sample]
                arrays.update(position=np.arange(n, dtype=np.int32), token_id=np.zeros(n, np.int32),
                              grid=np.full(n, -1, np.int16), row=np.full(n, -1, np.int16),
                              col=np.full(n, -1, np.int16))
                w.add({"key": f"planted{i:07d}/0/0", "task_id": f"planted{i:07d}", "test_index": 0,
                       "augmentation": {"hflip": False, "rot90": 0, "color_map": list(range(10)),
                                        "train_order": []},
                       "prompt_tokens": n}, arrays)
                i += 1
    return hooks


def recovered(atoms: np.ndarray, W_dec: np.ndarray, threshold: float = 0.9) -> float:
    """Share of ``atoms`` whose best-matching decoder row has cosine similarity > ``threshold``."""
    cos = unit_rows(np.asarray(atoms, np.float64)) @ unit_rows(np.asarray(W_dec, np.float64)).T
    return float(np.mean(cos.max(axis=1) > threshold))


# -- pytest fixtures (import _planted_small, _planted_transcoder into a test module) ----------

@pytest.fixture(scope="session", name="planted_small")
def _planted_small(tmp_path_factory):
    """(store path, dictionary): 64 atoms in d=32, uniform frequencies, 3 per token, 24k tokens."""
    dic = make_dictionary(64, 32, seed=3, per_token=3.0)
    path = tmp_path_factory.mktemp("planted") / "small"
    write_planted_store(path, dic, 24_576, shard_bytes=256 << 10, tokens_per_sample=128)
    return str(path), dic


@pytest.fixture(scope="session", name="planted_transcoder")
def _planted_transcoder(tmp_path_factory):
    """(store path, dictionary): a transcoder store, y = sum c_i b_i for x = offset + sum c_i a_i."""
    dic = make_dictionary(64, 32, seed=4, per_token=3.0, transcoder=True)
    path = tmp_path_factory.mktemp("planted") / "transcoder"
    write_planted_store(path, dic, 24_576, shard_bytes=256 << 10, tokens_per_sample=128)
    return str(path), dic
