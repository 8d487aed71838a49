"""ExtractJob: `run` into a store and `device_batches` on the device go through one schedule.

One job (module fixture) runs a small task set into a store in float32, then yields the same
tasks as device batches. The batches hold bit for bit what `run` stored for each sample (the same
compiled program on the same batches), every sample comes once per pass, `start` skips batches
without computing them, `order_seed` permutes whole batches, and a stop request ends the
iteration between batches. The 2-process version is tests/distributed/test_device_batches.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from tests.support.stores import stored
from tests.support.tasks import write_tasks

HOOKS = ["blocks.1.hook_resid_post", "blocks.3.hook_mlp_out"]


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_model_dir):
    from arclens.data.loaders import load_tasks
    from arclens.pipeline.job import ExtractJob
    from arclens.pipeline.settings import CaptureSettings, ExtractSettings, StoreSettings
    from arclens.prompts import PromptConfig

    root = tmp_path_factory.mktemp("job")
    tasks = load_tasks(str(write_tasks(root / "tasks.json", n_tasks=3, seed=3)))
    capture = CaptureSettings.load(str(tiny_model_dir), HOOKS, prompt=PromptConfig(predictions_per_task=2),
                                   dtype="float32", tokens_per_batch=1024)
    settings = ExtractSettings(capture=capture, store=StoreSettings(dest=str(root / "store"), shard_bytes=1 << 20,
                                                                    tasks_source="tasks.json"))
    with ExtractJob(settings) as extract_job:
        summary = extract_job.run(tasks, progress=False)
        got = stored(root / "store")
        assert summary.complete and summary.samples == len(got) == 8  # 4 test inputs x 2 augmentations
        yield {"job": extract_job, "tasks": tasks, "stored": got}


def _take(batches):
    """Materialise a pass, keeping every batch alive (the consumer holds them all)."""
    return list(batches)


def test_device_batches_hold_exactly_what_run_stored(job):
    import jax

    batches = _take(job["job"].device_batches(job["tasks"]))
    assert [b.index for b in batches] == list(range(len(batches))) and len(batches) > 2
    seen = []
    for b in batches:
        B, T = b.valid.shape
        assert b.lengths.shape == (B,) and b.lengths.dtype == np.int32
        for hook in HOOKS:
            cap = b.captures[hook]
            assert isinstance(cap, jax.Array) and cap.shape == (B, T, 64) and cap.dtype == np.float32
            assert all(d.platform == "cpu" for d in cap.devices())  # a device array, not numpy
        valid, lengths = np.asarray(b.valid), np.asarray(b.lengths)
        for row in range(B):
            sample = b.samples.get(row)
            if sample is None:  # a padding row
                assert lengths[row] == 0 and not valid[row].any()
                continue
            n = len(sample.token_ids)
            assert lengths[row] == n and valid[row, :n].all() and not valid[row, n:].any()
            _, want = job["stored"][sample.key]
            for hook in HOOKS:
                np.testing.assert_array_equal(np.asarray(b.captures[hook][row, :n]), want[hook])
            seen.append(sample.key)
    assert sorted(seen) == sorted(job["stored"])  # every sample once in the pass


def test_start_skips_batches_without_computing_them(job):
    j = job["job"]
    full = [(b.index, sorted(s.key for s in b.samples.values())) for b in j.device_batches(job["tasks"])]
    before = j.runner.dispatches
    rest = [(b.index, sorted(s.key for s in b.samples.values())) for b in j.device_batches(job["tasks"], start=2)]
    assert rest == full[2:]
    assert j.runner.dispatches - before == len(full) - 2  # the skipped batches were never computed


def test_order_seed_permutes_whole_batches(job):
    j = job["job"]

    def order(**kw):
        return [(b.index, tuple(sorted(s.key for s in b.samples.values()))) for b in j.device_batches(job["tasks"], **kw)]

    plain, shuffled, again = order(), order(order_seed=5), order(order_seed=5)
    assert shuffled == again  # deterministic
    assert [i for i, _ in shuffled] == list(range(len(plain)))
    assert sorted(k for _, k in shuffled) == sorted(k for _, k in plain)  # the same batches...
    assert [k for _, k in shuffled] != [k for _, k in plain]  # ...in another order
    resumed = order(order_seed=5, start=3)
    assert resumed == shuffled[3:]


def test_a_stop_request_ends_the_iteration_between_batches(job):
    j = job["job"]
    got = []
    try:
        for b in j.device_batches(job["tasks"]):
            got.append(b.index)
            j.stop.request("test")
        assert got == [0]
    finally:
        j.stop.event.clear()
        j.stop.signal_name = None
