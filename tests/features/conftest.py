"""Stores, SAEs and FDIRs shared by the features tests (session-scoped: built once).

The exact-statistics store holds real arc24 prompts of the tiny tokenizer (8 augmentations per
task, answers shown, some tasks with two test inputs), written in a shuffled order over many small
shards, with *quantised* activations and SAE weights: every value is a small multiple of a power
of two, so float32 on the device and float64 in numpy compute the very same activations, and ties
are common (the newline token always carries the same vector), which the top-K must break by key
and position.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from tests.support import planted_roles as pr
from tests.support.features_brute import D_MODEL, SETTINGS, quantised_sae


@dataclass
class ExactStore:
    dest: Path
    tasks_path: Path
    tasks: list
    tokenizer: object
    model_dir: Path
    tie_token: int


@pytest.fixture(scope="session")
def exact_store(tmp_path_factory, tiny_model_dir) -> ExactStore:
    root = tmp_path_factory.mktemp("exact")
    tasks_path = pr.write_tasks(root / "tasks.json", 4, seed=1, two_tests=True)
    tasks, tokenizer, config, samples = pr.render(tasks_path, tiny_model_dir, predictions_per_task=8,
                                                  with_answer=True)
    tie_token = tokenizer.encode("\n")[0]
    align = np.sign(quantised_sae("standard").W_enc[:, :4].sum(axis=1))  # strong on latents 0-3: many ties

    def activations(s):
        rng = np.random.default_rng(zlib.crc32(s.key.encode()))
        x = rng.integers(-4, 5, (len(s.token_ids), D_MODEL)) / 4
        x[s.token_ids == tie_token] = np.asarray(align)
        return x

    # One (task, test index) keeps a single augmentation: its cells are seen once, and consistency
    # must leave them out.
    single = sorted({s.key.rsplit("/", 1)[0] for s in samples})[1]
    samples = [s for s in samples if s.key.rsplit("/", 1)[0] != single or s.key.endswith("/0")]
    order = np.random.default_rng(7).permutation(len(samples))
    meta = pr.store_metadata(tiny_model_dir, tasks_path, tasks, config, D_MODEL)
    pr.write_store(root / "store", [samples[i] for i in order], activations, meta, shard_bytes=60_000)
    return ExactStore(root / "store", tasks_path, tasks, tokenizer, Path(tiny_model_dir), tie_token)


@pytest.fixture(scope="session", params=["standard", "topk"])
def exact_run(request, exact_store, tmp_path_factory):
    """(architecture, SAE, FDIR) for `arclens features` over the exact store, sweeping the kept
    activations every 2 batches (the default is every 32) so that the sweep is exercised too."""
    from arclens.features import accumulate
    from arclens.features.run import FeaturesSettings, run
    from arclens.sae import save

    arch = request.param
    root = tmp_path_factory.mktemp(f"exact-{arch}")
    sae = quantised_sae(arch)
    save(sae, str(root / "sae"))
    saved, accumulate.GC_EVERY = accumulate.GC_EVERY, 2
    try:
        run(FeaturesSettings(sae=str(root / "sae"), out=root / "fdir", store=str(exact_store.dest), progress=False,
                             **SETTINGS))
    finally:
        accumulate.GC_EVERY = saved
    return arch, sae, root / "fdir"


@pytest.fixture(scope="session")
def exact_brute(exact_store):
    """The brute-force recomputation's inputs: the whole store and the tasks by id."""
    from tests.support.stores import stored

    return stored(exact_store.dest), {t.task_id: t for t in exact_store.tasks}
