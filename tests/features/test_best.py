"""BestPerGroup (features/best.py) against a full sort, with ties, in any order of offers."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from arclens.features.best import BestPerGroup, exact_order, rank_in_group


@settings(max_examples=150, deadline=None)
@given(data=st.data(), n_groups=st.integers(1, 5), cap=st.integers(1, 6), n_batches=st.integers(1, 6))
def test_streamed_best_equals_the_best_of_everything(data, n_groups, cap, n_batches):
    best = BestPerGroup(n_groups, cap, np.float64)
    everything = []
    used = set()
    for _ in range(n_batches):
        n = data.draw(st.integers(0, 12))
        groups = data.draw(st.lists(st.integers(0, n_groups - 1), min_size=n, max_size=n))
        k1 = data.draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, -1.0, 2.0]), min_size=n, max_size=n))  # many ties
        k2 = []
        for _ in range(n):  # distinct secondary keys, as token ordinals are
            k = data.draw(st.integers(0, 10_000).filter(lambda v: v not in used))
            used.add(k)
            k2.append(k)
        kept = best.offer(np.asarray(groups), np.asarray(k1), np.asarray(k2), np.asarray(k1, np.float32))
        everything += list(zip(groups, k1, k2))
        # what an offer reports as kept is in the structure right after it
        g, _, _, k2s, _ = best.items()
        now = set(zip(g.tolist(), k2s.tolist()))
        assert all((groups[i], k2[i]) in now for i in kept.tolist())
    g, _, k1s, k2s, _ = best.items()
    for group in range(n_groups):
        want = sorted((a, b) for gg, a, b in everything if gg == group)[:cap]
        have = [(a, b) for gg, a, b in zip(g.tolist(), k1s.tolist(), k2s.tolist()) if gg == group]
        assert have == want


# keys that tie in the top 32 bits of their ordered form but not in full, and keys that tie in
# full (-0.0 and 0.0 compare equal), for each k1 dtype BestPerGroup is used with
_NEAR_KEYS = {
    np.float64: [0.0, -0.0, 1.0, 1.0 + 2.0**-40, 1.0 - 2.0**-45, -1.0, -1.0 - 2.0**-40, 3e-300, -np.inf, np.inf],
    np.float32: [0.0, -0.0, 1.0, float(np.nextafter(np.float32(1), np.float32(2))), -1.0, 2.5, -2.5, np.inf],
    np.int64: [0, 1, 2, 2**32, 2**32 + 1, -1, -(2**32), 2**62, -(2**62), 2**63 - 1],
}


@settings(max_examples=200, deadline=None)
@given(data=st.data(), dtype=st.sampled_from(sorted(_NEAR_KEYS, key=str)), n=st.integers(0, 60))
def test_exact_order_is_the_three_key_lexsort(data, dtype, n):
    groups = np.asarray(data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)), np.int64)
    k1 = np.asarray(data.draw(st.lists(st.sampled_from(_NEAR_KEYS[dtype]), min_size=n, max_size=n)), dtype)
    shuffled = np.asarray(data.draw(st.permutations(range(n))), np.int64)
    # distinct within a group, as a token's ordinal is; the same values recur across groups
    k2 = np.asarray([int((shuffled[groups == g] < v).sum()) for g, v in zip(groups, shuffled)], np.int64)
    order = exact_order(groups, k1, k2)
    assert order.tolist() == np.lexsort((k2, k1, groups)).tolist()
    assert rank_in_group(groups[order]).tolist() == [
        int((groups[order][:i] == g).sum()) for i, g in enumerate(groups[order].tolist())]


@settings(max_examples=60, deadline=None)
@given(data=st.data(), dtype=st.sampled_from(sorted(_NEAR_KEYS, key=str)), cap=st.integers(1, 4))
def test_streamed_best_is_exact_for_keys_that_nearly_tie(data, dtype, cap):
    best = BestPerGroup(3, cap, dtype)
    everything, next_k2 = [], 0
    for _ in range(data.draw(st.integers(1, 5))):
        n = data.draw(st.integers(0, 15))
        groups = data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
        k1 = np.asarray(data.draw(st.lists(st.sampled_from(_NEAR_KEYS[dtype]), min_size=n, max_size=n)), dtype)
        k2 = np.arange(next_k2, next_k2 + n)[::-1]  # (offered against their order)
        next_k2 += n
        best.offer(np.asarray(groups, np.int64), k1, k2, np.zeros(n, np.float32))
        everything += list(zip(groups, k1.tolist(), k2.tolist()))
    g, _, k1s, k2s, _ = best.items()
    for group in range(3):
        want = sorted((a + 0, b) for gg, a, b in everything if gg == group)[:cap]  # (-0.0 + 0 is 0.0)
        assert [(a + 0, b) for a, b in zip(k1s[g == group].tolist(), k2s[g == group].tolist())] == want


def test_take_and_reoffer_merges_groups():
    best = BestPerGroup(4, 2, np.int64)
    best.offer(np.array([0, 0, 1, 1, 1]), np.array([5, 1, 4, 2, 3]), np.arange(5), np.zeros(5))
    g, k1, k2, v = best.take([0, 1])
    assert sorted(k1.tolist()) == [1, 2, 3, 5]
    best.offer(np.full(len(g), 3), k1, k2, v)  # the two groups merged into one
    _, _, k1s, _, _ = best.items()
    assert k1s.tolist() == [1, 2]


def test_pairs_cut_on_the_device_equal_numpys():
    """The accelerator path of the firing pairs (jnp.nonzero with a static size, doubled until it
    fits) gives exactly what the CPU path gives; run here on the CPU backend."""
    import jax.numpy as jnp

    from arclens.features.pairs import device_pairs, host_pairs

    rng = np.random.default_rng(0)
    z = np.where(rng.random((300, 40)) < 0.2, rng.random((300, 40)), 0).astype(np.float32)
    want = host_pairs(z)
    padded, count, cap = device_pairs(jnp.asarray(z), int((z > 0).sum()), 1)
    assert cap == 16  # 1 pair per token did not fit ~8; doubled to the first that does
    assert count == len(want[0]) and len(padded[0]) == 16 * 300
    for a, b in zip(padded, want):
        np.testing.assert_array_equal(np.asarray(a)[:count], b)
    assert np.all(np.diff(want[1]) >= 0)  # token order


def test_topk_step_equals_the_dense_step():
    """A TopK SAE's batch reduced from its [N, k] codes (scatter-adds, no dense z) gives the very
    statistics and firing pairs of the dense path (sae.encode, the role matmul, numpy's nonzero):
    with tied pre-activations (ties go to the lower latent in both), non-firing slots among the
    k (pre <= 0) and padding slots."""
    from types import SimpleNamespace

    import jax.numpy as jnp

    from arclens.features.device import ROLE_FIELDS, batch_stats, encode_batch
    from arclens.features.layout import role_columns
    from arclens.features.pairs import host_pairs, topk_pairs
    from arclens.sae import SAEConfig, new_sae

    rng = np.random.default_rng(1)
    n, d, f, k = 96, 8, 24, 5
    w_enc = rng.integers(-2, 3, (d, f)) / 4  # quantised: many ties, exact sums in float32
    b_enc = -rng.integers(0, 4, f) / 4
    w_enc[:, 7], b_enc[7] = w_enc[:, 3], b_enc[3]  # latents 3 and 7 always tie
    sae = new_sae(SAEConfig("topk", d, f, d, k=k), w_enc, b_enc, w_enc.T.copy(), np.zeros(d))
    x = (rng.integers(-4, 5, (n, d)) / 4).astype(np.float32)
    valid = (np.arange(n) < n - 7).astype(np.float32)  # the last 7 slots are padding
    cell = (rng.random(n) < 0.7) & (valid > 0)
    kind = np.where(cell, rng.integers(0, 4, n), -1)
    fields = [kind] + [np.where(cell, rng.integers(0, hi, n), -1) for hi in (10, 10, 30, 30, 2)]
    batch = SimpleNamespace(x=x, valid=valid, role_cols=role_columns(*fields),
                            roles=dict(zip(ROLE_FIELDS, (a.astype(np.int8) for a in fields))))
    codes, got = encode_batch(sae, batch)
    assert isinstance(codes, tuple)
    z, want = batch_stats(sae, jnp.asarray(x), jnp.asarray(valid), *(jnp.asarray(batch.roles[r]) for r in ROLE_FIELDS))
    for name in want:
        np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(want[name]), err_msg=name)
    dense = host_pairs(np.asarray(z))
    sparse = topk_pairs(*codes)
    zn = np.asarray(z)
    assert ((zn[:, 3] > 0) & (zn[:, 7] == 0)).any()  # the tie cut at the k-th place, to the lower latent
    assert len(dense[0]) > n  # most slots fire; some of the k do not (pre <= 0)
    assert len(dense[0]) < k * (n - 7)
    order = np.lexsort((sparse[0], sparse[1]))  # within a token, TopK codes come by value, not latent
    for a, b in zip((p[order] for p in sparse), dense):
        np.testing.assert_array_equal(a, b)
    assert np.all(np.diff(sparse[1]) >= 0)  # token order
