"""Activation statistics for `arclens inspect`, over a bounded sample of tokens per hook.

A store can hold terabytes, so inspect reads at most ``max_tokens`` tokens per hook: whole shards
in a seeded random order, each thinned to an even stride, until the budget is met. The summary
says how many tokens it saw.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PERCENTILES = (1, 5, 25, 50, 75, 95, 99)


@dataclass
class HookStats:
    hook: str
    tokens_seen: int
    norm_mean: float
    norm_std: float
    norm_percentiles: dict[int, float]
    norm_max: float
    value_mean: float
    value_std: float
    nonfinite: int
    histogram: tuple[np.ndarray, np.ndarray]  # (counts, bin edges) of norms


def token_sample(store, hook: str, max_tokens: int = 65536, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    per_shard = max(1, max_tokens // max(1, len(store.shards)))
    parts, total = [], 0
    for i in rng.permutation(len(store.shards)):
        view = store.shards[i]
        x = view.visible(view.file.read([hook])[hook])
        if x.shape[0] > per_shard:
            x = x[:: int(np.ceil(x.shape[0] / per_shard))]
        parts.append(np.asarray(x, dtype=np.float32))
        total += parts[-1].shape[0]
        if total >= max_tokens:
            break
    if not parts:
        return np.zeros((0, store.d_model), np.float32)
    return np.concatenate(parts)[:max_tokens]


def hook_stats(store, hook: str, max_tokens: int = 65536, bins: int = 12) -> HookStats:
    x = token_sample(store, hook, max_tokens)
    finite = np.isfinite(x).all(axis=1)
    nonfinite = int((~finite).sum())
    x = x[finite]
    if x.shape[0] == 0:
        nan = float("nan")
        return HookStats(hook, 0, nan, nan, {p: nan for p in PERCENTILES}, nan, nan, nan, nonfinite,
                         (np.zeros(0, int), np.zeros(1)))
    norms = np.linalg.norm(x, axis=1)
    pct = dict(zip(PERCENTILES, (float(v) for v in np.percentile(norms, PERCENTILES))))
    return HookStats(
        hook=hook,
        tokens_seen=int(x.shape[0]) + nonfinite,
        norm_mean=float(norms.mean()),
        norm_std=float(norms.std()),
        norm_percentiles=pct,
        norm_max=float(norms.max()),
        value_mean=float(x.mean()),
        value_std=float(x.std()),
        nonfinite=nonfinite,
        histogram=np.histogram(norms, bins=bins),
    )
