"""Forward batches for the on-the-fly shuffle tests (``sae.shuffle.DeviceShuffle``), with no model.

Token (prompt p, position t) has the value ``p * 1000 + t`` in every column of ``H1`` and its
negative in ``H2``, so a training batch says which tokens it holds. Prompts have random lengths and
the last forward batch of an epoch has a padding row; the batch order depends on the epoch, as the
extract job's ``order_seed`` makes it. ``place`` puts each array where the caller wants it (on a
mesh, for the sharded shuffle).
"""

from __future__ import annotations

import numpy as np

H1, H2 = "blocks.0.hook_resid_mid", "blocks.0.hook_mlp_out"


class FakeForward:
    def __init__(self, rows: int = 4, length: int = 24, width: int = 6, n_forward: int = 11, place=None):
        import jax.numpy as jnp

        self.rows, self.length, self.width, self.n_forward = rows, length, width, n_forward
        self.place = place or (lambda x, kind: jnp.asarray(x))
        self.calls = []
        rng = np.random.default_rng(0)
        self.lengths = rng.integers(3, length + 1, size=(n_forward, rows))
        self.lengths[-1, -1] = 0  # a padding row

    def __call__(self, epoch, start):
        self.calls.append((epoch, start))
        order = np.random.default_rng(epoch).permutation(self.n_forward)
        for i in order[start:]:
            prompt = i * self.rows + np.arange(self.rows)
            pos = np.arange(self.length)
            value = (prompt[:, None] * 1000 + pos[None, :]).astype(np.float32)
            valid = pos[None, :] < self.lengths[i][:, None]
            caps = np.repeat(value[:, :, None], self.width, axis=2)
            yield {H1: self.place(caps, "captures"), H2: self.place(-caps, "captures")}, self.place(valid, "valid")

    def n_tokens(self) -> int:
        return int(self.lengths.sum())

    def tokens(self) -> set[int]:
        """Every valid token's value."""
        return {int(i * self.rows + r) * 1000 + t for i in range(self.n_forward) for r in range(self.rows)
                for t in range(self.lengths[i][r])}
