"""Every statistic of `arclens features`, recomputed by brute force: the whole store in memory,
the SAE's encode in float64 numpy, the roles from tests.support.planted_roles.truth_of, and plain
loops and sorts over all tokens. Meant for stores of a few thousand tokens."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tests.support.planted_roles import HOOK, KINDS, truth_of

D_MODEL = 64  # the tiny model's hidden size, so token strings and logits come from it
D_SAE = 48
EDGES = 10.0 ** np.linspace(-5, 5, 101)
# The settings the exact tests run `arclens features` with (small, so that every cut is exercised).
SETTINGS = {"top_k": 5, "quantiles": 4, "quantile_examples": 3, "context": 3, "logits": 6, "batch_tokens": 1024}


def encode(sae_np: dict, cfg, x: np.ndarray) -> np.ndarray:
    """SAELens's encode for standard / jumprelu / topk, in float64, ties to the lower index."""
    x = x.astype(np.float64)
    if cfg.apply_b_dec_to_input:
        x = x - sae_np["b_dec"]
    pre = x @ sae_np["W_enc"].astype(np.float64) + sae_np["b_enc"]
    if cfg.architecture == "standard":
        return np.maximum(pre, 0)
    if cfg.architecture == "jumprelu":
        return np.where(pre > sae_np["threshold"], np.maximum(pre, 0), 0)
    z = np.zeros_like(pre)
    idx = np.argsort(-pre, axis=1, kind="stable")[:, : cfg.k]
    rows = np.arange(len(pre))[:, None]
    z[rows, idx] = np.maximum(pre[rows, idx], 0)
    return z


@dataclass
class Token:
    key: str
    position: int
    z: np.ndarray  # [F]


@dataclass
class Brute:
    keys: list  # per token
    positions: np.ndarray
    token_ids: np.ndarray
    token_hash: np.ndarray  # uint64 [N], features.hashing.token_hashes
    z: np.ndarray  # [N, F]
    kind: np.ndarray
    colour: np.ndarray
    shown: np.ndarray
    row: np.ndarray
    col: np.ndarray
    border: np.ndarray
    original: list  # per token: (task, test index, original grid, row, col) or None
    samples: dict  # key -> (info, arrays, truth, z rows slice)


def compute(stored: dict, tasks_by_id: dict, tokenizer, sae, hook: str) -> Brute:
    from arclens.features.hashing import token_hashes
    from arclens.prompts import Augmentation

    cfg = sae.cfg
    w = {k: np.asarray(getattr(sae, k), np.float64) for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
    if cfg.architecture == "jumprelu":
        w["threshold"] = np.asarray(sae.threshold, np.float64)
    parts = defaultdict(list)
    samples, start = {}, 0
    for key, (info, arrays) in stored.items():
        aug = Augmentation.from_json(info["augmentation"])
        t = truth_of(aug, info["test_index"], arrays["token_id"], arrays["grid"], arrays["row"], arrays["col"],
                     tasks_by_id[info["task_id"]], tokenizer)
        z = encode(w, cfg, arrays[hook])
        n = len(z)
        parts["z"].append(z)
        for f in ("kind", "colour", "shown", "row", "col", "border"):
            parts[f].append(getattr(t, f))
        parts["keys"].extend([key] * n)
        parts["positions"].append(arrays["position"].astype(np.int64))
        parts["token_ids"].append(arrays["token_id"])
        parts["token_hash"].append(token_hashes(key, arrays["position"]))
        parts["original"].extend([None if o is None else (info["task_id"], info["test_index"], *o) for o in t.original])
        samples[key] = (info, arrays, t, slice(start, start + n))
        start += n
    cat = {k: np.concatenate(v) for k, v in parts.items() if k not in ("keys", "original")}
    return Brute(keys=parts["keys"], original=parts["original"], samples=samples, **cat)


def masses(b: Brute) -> dict:
    """Per-latent sums by role, as in latents.safetensors."""
    z, cell = b.z, b.kind >= 0
    out = {"n_fires": (z > 0).sum(0), "mass": z.sum(0), "max_act": z.max(0), "cell_mass": z[cell].sum(0),
           "border_mass": z[b.border == 1].sum(0)}
    out["grid_kind_mass"] = np.stack([z[b.kind == k].sum(0) for k in range(4)], 1)
    out["colour_mass"] = np.stack([z[b.colour == c].sum(0) for c in range(10)], 1)
    out["shown_colour_mass"] = np.stack([z[b.shown == c].sum(0) for c in range(10)], 1)
    out["row_mass"] = np.stack([z[b.row == r].sum(0) for r in range(30)], 1)
    out["col_mass"] = np.stack([z[b.col == c].sum(0) for c in range(30)], 1)
    return out


def histogram(b: Brute) -> np.ndarray:
    f = b.z.shape[1]
    out = np.zeros((f, 102), np.int64)
    for j in range(f):
        v = b.z[:, j][b.z[:, j] > 0]
        out[j, 0] = (v < EDGES[0]).sum()
        for i in range(1, 101):
            out[j, i] = ((v >= EDGES[i - 1]) & (v < EDGES[i])).sum()
        out[j, 101] = (v >= EDGES[-1]).sum()
    return out


def top_k(b: Brute, latent: int, k: int) -> list[tuple[str, int, float]]:
    """The k highest activations, ties by key (string order) then position."""
    v = b.z[:, latent]
    items = [(-v[i], b.keys[i], int(b.positions[i])) for i in np.flatnonzero(v > 0)]
    return [(key, pos, -neg) for neg, key, pos in sorted(items)[:k]]


def quantile_draws(b: Brute, latent: int, q: int, per: int) -> dict[int, list[tuple[str, int]]]:
    """Per interval index: the (key, position) of its `per` tokens of smallest hash, in that order."""
    from arclens.features.hashing import latent_hashes

    v = b.z[:, latent]
    fired = np.flatnonzero(v > 0)
    if not len(fired):
        return {}
    top = 2.0 ** np.frexp(v.max())[1]
    hashes = latent_hashes(b.token_hash[fired], np.full(len(fired), latent))
    out = defaultdict(list)
    for i, h in zip(fired.tolist(), hashes.tolist()):
        out[int(np.floor(v[i] * q / top))].append((h, b.keys[i], int(b.positions[i])))
    return {j: [(key, pos) for _, key, pos in sorted(items)[:per]] for j, items in out.items()}


def interval_counts(b: Brute, latent: int, q: int) -> dict[int, int]:
    v = b.z[:, latent]
    v = v[v > 0]
    if not len(v):
        return {}
    top = 2.0 ** np.frexp(v.max())[1]
    j, n = np.unique(np.floor(v * q / top).astype(int), return_counts=True)
    return dict(zip(j.tolist(), n.tolist()))


def consistency(b: Brute) -> tuple[np.ndarray, np.ndarray]:
    """Per latent: mean over original cells seen >= 2 times and fired >= once of fired / seen."""
    f = b.z.shape[1]
    seen = defaultdict(set)  # original cell -> sample keys showing it
    fired = defaultdict(set)  # (original cell, latent) -> sample keys where it fires on the cell
    for i, o in enumerate(b.original):
        if o is None:
            continue
        seen[o].add(b.keys[i])
        for lat in np.flatnonzero(b.z[i] > 0):
            fired[(o, int(lat))].add(b.keys[i])
    total, count = np.zeros(f), np.zeros(f, np.int64)
    for (o, lat), keys in fired.items():
        if len(seen[o]) >= 2:
            total[lat] += len(keys) / len(seen[o])
            count[lat] += 1
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan), count


def properties(b: Brute) -> dict[str, np.ndarray]:
    """Every coverage property as a boolean mask over tokens."""
    cell = b.kind >= 0
    props = {f"colour={c}": cell & (b.colour == c) for c in range(10)}
    props.update({f"grid={k}": b.kind == i for i, k in enumerate(KINDS)})
    props.update({f"row={r}": cell & (b.row == r) for r in range(30)})
    props.update({f"col={c}": cell & (b.col == c) for c in range(30)})
    props["border"] = b.border == 1
    props.update({f"colour={c}&grid={k}": (b.kind == i) & (b.colour == c) for i, k in enumerate(KINDS)
                  for c in range(10)})
    return props


def f1(b: Brute, mask: np.ndarray, q: int) -> np.ndarray:
    """[F, Q]: F1 of each latent as a detector of `mask` when active means z > 0 (j = 0) or
    floor(z * Q / M) >= j, M the power of two above the latent's maximum."""
    top = 2.0 ** np.frexp(b.z.max(0))[1]
    bins = np.floor(b.z * q / top[None, :])
    out = np.zeros((b.z.shape[1], q))
    for j in range(q):
        active = (b.z > 0) & (bins >= j)
        tp = (active & mask[:, None]).sum(0)
        out[:, j] = 2 * tp / (active.sum(0) + mask.sum())
    return out


def read_fdir(fdir: Path):
    from safetensors.numpy import load_file

    doc = json.loads((fdir / "features.json").read_text())
    arrays = load_file(str(fdir / "latents.safetensors"))
    examples = [json.loads(line) for line in (fdir / "examples.jsonl").read_text().splitlines()]
    samples = {s["key"]: s for s in map(json.loads, (fdir / "samples.jsonl").read_text().splitlines())}
    return doc, arrays, examples, samples


def quantised_sae(architecture: str, seed: int = 0):
    from arclens.sae import SAEConfig, new_sae

    rng = np.random.default_rng(seed)
    w_enc = rng.integers(-8, 9, (D_MODEL, D_SAE)) / 16
    b_enc = -rng.integers(16, 48, D_SAE) / 16
    b_dec = rng.integers(-2, 3, D_MODEL) / 8
    w_dec = rng.standard_normal((D_SAE, D_MODEL)) / 8
    k = 4 if architecture == "topk" else None
    threshold = rng.integers(0, 8, D_SAE) / 8 if architecture == "jumprelu" else None
    cfg = SAEConfig(architecture, D_MODEL, D_SAE, D_MODEL, k=k, hook_name=HOOK)
    return new_sae(cfg, w_enc, b_enc, w_dec, b_dec, threshold)
