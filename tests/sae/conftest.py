"""Planted-dictionary stores and a small in-process trainer for the SAE tests.

Stores are session-scoped (written once), training runs are cached per configuration, so each
test file pays only for what it adds.
"""

from __future__ import annotations

import pytest
from tests.support.planted import _planted_small, _planted_transcoder  # noqa: F401 - fixtures


@pytest.fixture(scope="session")
def four_archs(planted_small, planted_transcoder, tmp_path_factory):
    """{(arch, transcoder): folder}: each store trains all four architectures in one run (one
    jitted step for the four), a few hundred tokens each; for the format tests."""
    from arclens.sae.recipe import ARCHS

    out = {}
    for transcoder, (store, _) in ((False, planted_small), (True, planted_transcoder)):
        root = tmp_path_factory.mktemp("four-archs")
        folders = train_many(store, root, [{"arch": a, "transcoder": transcoder, "d_sae": 48, "k": 4} for a in ARCHS],
                             tokens=3072)
        out.update({(a, transcoder): f for a, f in zip(ARCHS, folders)})
    return out


def spec_for(store, arch, *, transcoder=False, d_sae=64, k=4, coef=None, name=None):
    from arclens.sae import recipe as R

    hook_in = store.hooks[0]
    hook_out = store.hooks[1] if transcoder else None
    if coef is None:
        coef = {"jumprelu": R.DEFAULT_L0_COEF, "relu": R.DEFAULT_L1_COEF}.get(arch)
    default = f"{hook_in}--{hook_out}" if transcoder else hook_in
    return R.SAESpec(name=name or default, hook_in=hook_in, hook_out=hook_out, arch=arch, d_in=store.d_model,
                     d_out=store.d_model, d_sae=d_sae, k=k if arch in ("topk", "batchtopk") else None,
                     sparsity_coef=coef)


def train_many(store_path, out, sae_kwargs: list[dict], *, tokens=4096, batch=512, lr=None, seed=0,
               dtype="float32", recipe=None, name_by="arch"):
    """Several SAEs in one run (one data stream, one jitted step); returns their folders."""
    import arclens
    from arclens.sae import recipe as R
    from arclens.sae.store_source import StoreSource, store_fingerprint
    from arclens.sae.trainer import RunOptions, train

    store = arclens.open_store(str(store_path))
    specs = tuple(spec_for(store, name=f"{kw['arch']}{'-tc' if kw.get('transcoder') else ''}", **kw)
                  for kw in sae_kwargs)
    settings = R.TrainSettings(saes=specs, tokens=tokens, batch_tokens=batch, lr=lr, seed=seed, dtype=dtype,
                               recipe=recipe or R.Recipe(), source=store_fingerprint(store))
    source = StoreSource(store, settings.hooks, batch_tokens=batch, seed=seed, dtype=dtype)
    train(settings, source, RunOptions(out=str(out), progress=False))
    return [f"{out}/{s.name}" for s in specs]


def train_on_store(store_path, out, arch, *, transcoder=False, d_sae=64, k=4, tokens=4096, batch=512,
                   coef=None, lr=None, seed=0, dtype="float32", recipe=None, checkpoint_every=1000,
                   keep_checkpoints=False, stop=None):
    """Train one SAE (or transcoder) through the library API, as the command does."""
    import arclens
    from arclens.sae import recipe as R
    from arclens.sae.store_source import StoreSource, store_fingerprint
    from arclens.sae.trainer import RunOptions, train

    store = arclens.open_store(str(store_path))
    spec = spec_for(store, arch, transcoder=transcoder, d_sae=d_sae, k=k, coef=coef)
    settings = R.TrainSettings(saes=(spec,), tokens=tokens, batch_tokens=batch, lr=lr, seed=seed, dtype=dtype,
                               recipe=recipe or R.Recipe(), source=store_fingerprint(store))
    source = StoreSource(store, settings.hooks, batch_tokens=batch, seed=seed, dtype=dtype)
    result = train(settings, source, RunOptions(out=str(out), progress=False, checkpoint_every=checkpoint_every,
                                                 keep_checkpoints=keep_checkpoints), stop=stop)
    return result, f"{out}/{spec.name}"
