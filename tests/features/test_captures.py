"""The kept examples' activations (features/captures.py): after any sequence of additions and
sweeps, every kept (sample, latent) reads back exactly what was added, every block no entry uses
is freed, and the blocks hold at most twice the live values (mostly dead ones are copied out)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from arclens.features.captures import Captures, SampleRecord


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_sweeps_keep_what_is_live_and_free_the_rest(seed):
    rng = np.random.default_rng(seed)
    f = int(rng.integers(1, 6))
    captures, truth = Captures(f), {}
    for _ in range(8):
        for rank in rng.integers(0, 10, 3).tolist():  # a sample's block: its wanted latents' activations
            latents = [x for x in range(f) if rank * f + x not in captures.entries and rng.random() < 0.6]
            if not latents:
                continue
            parts, spans, start = [], [], 0
            for x in latents:
                n = int(rng.integers(1, 5))
                offsets = np.sort(rng.choice(50, n, replace=False)).astype(np.int32)
                parts.append((offsets, rng.random(n).astype(np.float32)))
                spans.append((x, start, start + n))
                start += n
                truth[rank * f + x] = parts[-1]
            block = captures._new_block(np.concatenate([o for o, _ in parts]), np.concatenate([v for _, v in parts]))
            for x, a, b in spans:
                captures.entries[rank * f + x] = (block, a, b)
            captures.samples[rank] = SampleRecord({}, {}, None, False)
        truth = {code: truth[code] for code in truth if rng.random() < 0.5}
        captures.keep_only(np.asarray(sorted(truth), np.int64))
        assert set(captures.entries) == set(truth)
        for code, (offsets, values) in truth.items():
            got_offsets, got_values = captures.acts(code)
            np.testing.assert_array_equal(got_offsets, offsets)
            np.testing.assert_array_equal(got_values, values)
        used = {block for block, _, _ in captures.entries.values()}
        assert set(captures.blocks) == used
        assert sum(len(captures.blocks[b][0]) for b in used) <= 2 * sum(len(o) for o, _ in truth.values())
        assert set(captures.samples) == {code // f for code in truth}
