"""The device-side shuffle buffer: every valid token once per epoch, batches that mix many
prompts, one permutation for every hook, a function of the seed, and an exact resume that
recomputes only its own window."""

from __future__ import annotations

import numpy as np
import pytest
from tests.support.fly_forward import H1, H2, FakeForward

from arclens.sae.shuffle import DeviceShuffle, FlyPosition, buffer_size

B, N_FORWARD = 4, 11  # FakeForward's rows and forward batches per epoch


def _take(shuffle, forward, n, position=None):
    out = []
    for batch, pos in shuffle.batches(forward, position):
        out.append(({h: np.asarray(v) for h, v in batch.items()}, pos))
        if len(out) == n:
            break
    return out


def _ids(batch):
    return batch[H1][:, 0].astype(np.int64)


@pytest.fixture
def forward():
    return FakeForward()


def test_every_valid_token_once_per_epoch_in_batches_that_mix_prompts(forward):
    bs = 16
    sh = DeviceShuffle([H1, H2], batch_tokens=bs, seed=0, window_batches=4)
    per_epoch = forward.n_tokens() // bs
    got = _take(sh, forward, 2 * per_epoch)
    ids = np.concatenate([_ids(b) for b, _ in got])
    first, second = ids[: per_epoch * bs], ids[per_epoch * bs:]
    all_tokens = forward.tokens()
    assert len(set(first)) == len(first) and set(first) <= all_tokens
    assert len(all_tokens) - len(first) < bs  # all but the carry-over into the next epoch
    assert np.unique(np.concatenate([first, second]), return_counts=True)[1].max() <= 2
    for b, _ in got:  # one permutation for both hooks
        np.testing.assert_array_equal(b[H2], -b[H1])
    prompts_per_batch = np.mean([len(set(_ids(b) // 1000)) for b, _ in got])
    assert prompts_per_batch > 8, prompts_per_batch  # a forward batch has only 4 prompts
    assert [c[1] for c in forward.calls] == [0, 0] and [c[0] for c in forward.calls] == [0, 1]


def test_without_shuffle_the_order_is_the_arrival_order(forward):
    sh = DeviceShuffle([H1], batch_tokens=16, seed=0, window_batches=3, shuffle=False)
    ids = np.concatenate([_ids(b) for b, _ in _take(sh, forward, 20)])
    order = np.random.default_rng(0).permutation(N_FORWARD)
    arrival = [p * 1000 + t for i in order for r, p in enumerate(range(i * B, i * B + B))
               for t in range(forward.lengths[i][r])]
    np.testing.assert_array_equal(ids, arrival[: len(ids)])


def test_the_order_is_a_function_of_the_seed(forward):
    a = _take(DeviceShuffle([H1], batch_tokens=16, seed=3, window_batches=4), forward, 5)
    b = _take(DeviceShuffle([H1], batch_tokens=16, seed=3, window_batches=4), FakeForward(), 5)
    c = _take(DeviceShuffle([H1], batch_tokens=16, seed=4, window_batches=4), FakeForward(), 5)
    for (x, _), (y, _) in zip(a, b):
        np.testing.assert_array_equal(x[H1], y[H1])
    assert not np.array_equal(a[0][0][H1], c[0][0][H1])


@pytest.mark.parametrize("skip", [1, 5, 9, 17, 40])
def test_resume_from_a_checkpointed_position_recomputes_only_its_window(forward, skip):
    sh = DeviceShuffle([H1, H2], batch_tokens=16, seed=1, window_batches=4)
    full = _take(sh, forward, skip + 6)
    pos = full[skip - 1][1]
    doc, arrays = sh.position_to_checkpoint(pos)
    restored = sh.position_from_checkpoint(doc, {k: np.array(v) for k, v in arrays.items()})
    again = FakeForward()
    resumed = _take(DeviceShuffle([H1, H2], batch_tokens=16, seed=1, window_batches=4), again, 6, restored)
    assert len(resumed) == 6
    for (x, _), (y, _) in zip(full[skip:], resumed):
        for h in (H1, H2):
            np.testing.assert_array_equal(x[h], y[h])
    assert again.calls[0] == (pos.epoch, pos.window * 4)  # the earlier forward batches are skipped


def test_a_stop_ends_the_stream_between_windows(forward):
    flag = {"stop": False}
    sh = DeviceShuffle([H1], batch_tokens=16, seed=0, window_batches=2, stopped=lambda: flag["stop"])
    it = sh.batches(forward)
    next(it)
    flag["stop"] = True
    rest = list(it)  # the batches of the window in hand, then nothing
    assert all(isinstance(p, FlyPosition) for _, p in rest)
    assert len(rest) < 20


def test_buffer_sizes_are_few():
    sizes = {buffer_size(n) for n in range(1000, 100_000, 37)}
    assert len(sizes) < 60 and all(s >= 1000 for s in sizes)
    assert all(buffer_size(n) >= n and buffer_size(n) <= n * 1.125 + 16 for n in range(1, 5000))
