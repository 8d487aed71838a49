"""The training loop: data stream -> one jitted step for every SAE -> metrics, checkpoints, export.

``train(settings, source, options)`` runs (or resumes, or finds finished) one run:

1. ``OUT/checkpoints/latest.json`` present: its settings must equal these (else UserError naming
   each differing field); every state leaf and the data position are restored exactly.
   Otherwise, SAE folders that already hold a finished run with these settings: nothing to do.
2. A fresh run takes its first batches (``INIT_SAMPLE_TOKENS``) to estimate the input scales and
   ``b_dec``'s geometric median, then trains on them first: the data order is the source's alone.
3. Each step is asynchronous; metrics are fetched every ``metrics_every`` steps. A checkpoint is
   committed every ``checkpoint_every`` steps, when a stop is requested (SIGTERM: the step in
   flight finishes, the checkpoint is committed, the caller exits 0), and after the last step
   (so a crash while exporting never retrains).
4. Each SAE's folder gets its SAELens files, sparsity, metrics, curves and ``arclens.json``; the
   checkpoints are then removed unless kept.

Several processes run this same loop (SPMD): every process feeds its rows of each global batch;
process 0 writes; a stop request is agreed between processes so that all stop at the same step.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field

import numpy as np

from arclens.crashpoints import crash_point
from arclens.errors import UserError
from arclens.sae import checkpoint as ckpt
from arclens.sae import recipe as R
from arclens.sae import report
from arclens.sae.progress import TrainProgress
from arclens.store import fs as fsx


@dataclass(frozen=True)
class RunOptions:
    """How a run is carried out (never part of the settings a resume compares)."""

    out: str
    checkpoint_every: int = 1000
    keep_checkpoints: bool = False
    metrics_every: int | None = None  # None: about 500 lines per run, at most every 100 steps
    progress: bool = True
    storage_options: dict | None = None
    model_name: str | None = None  # cfg.json metadata.model_name
    context_size: int | None = None  # cfg.json metadata.context_size


@dataclass
class TrainResult:
    status: str  # "complete" | "stopped" | "already-complete"
    step: int
    saes: list[dict] = field(default_factory=list)  # name, folder, final metrics
    wall_s: float = 0.0
    tokens_per_s: float | None = None
    stopped_by: str | None = None


def metrics_interval(n_steps: int, requested: int | None) -> int:
    if requested:
        return max(1, requested)
    return max(1, min(100, n_steps // 500))


def steady_tokens_per_s(lines: list[dict], batch_tokens: int) -> float | None:
    """The run's rate after its first metrics interval (which holds the compile): the later
    intervals' tokens over their seconds. Not a median of the interval rates: a source that works
    in bursts (on the fly, a shuffle window's forward passes every few steps) would have its slow
    intervals dropped and its rate overstated many times over."""
    tokens = seconds = 0.0
    for before, line in itertools.pairwise(lines):
        n = (line["step"] - before["step"]) * batch_tokens
        if n > 0 and line.get("tokens_per_s"):
            tokens, seconds = tokens + n, seconds + n / line["tokens_per_s"]
    return tokens / seconds if seconds > 0 else None


def sae_folder(root: str, name: str) -> str:
    return fsx.join(root, name)


# ---------------------------------------------------------------------------------------------
# host <-> device


def to_host(x) -> np.ndarray:
    """A whole array on the host, from any process: from this process's shards when they cover
    it (replicated or sharded within the host), else gathered from every process."""
    if x.is_fully_addressable:
        return np.asarray(x)
    out = np.empty(x.shape, x.dtype)
    seen, covered = set(), 0
    for s in x.addressable_shards:
        key = tuple((i.start, i.stop) if isinstance(i, slice) else i for i in s.index)
        if key in seen:
            continue
        seen.add(key)
        data = np.asarray(s.data)
        out[s.index] = data
        covered += data.size
    if covered == x.size:
        return out
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def state_shardings(states, mesh):
    """Latent-major leaves (encoder/decoder rows, b_enc, threshold, their Adam moments, the
    per-latent trackers) split over the mesh's ``model`` axis; everything else replicated."""
    import dataclasses

    from arclens.distributed.sharding import logical_sharding

    rules = {"latents": "model"}

    def latent(leaf):
        return logical_sharding(mesh, ("latents",) + (None,) * (leaf.ndim - 1), leaf.shape, rules)

    def replicated(leaf):
        return logical_sharding(mesh, (None,) * leaf.ndim, leaf.shape, rules)

    def params_like(p):
        if p is None:
            return None
        return dataclasses.replace(p, W_enc=latent(p.W_enc), b_enc=latent(p.b_enc), W_dec=latent(p.W_dec),
                                   b_dec=replicated(p.b_dec),
                                   threshold=None if p.threshold is None else latent(p.threshold))

    out = []
    for st in states:
        tr = st.trackers
        opt = st.opt._replace(count=replicated(st.opt.count), mu=params_like(st.opt.mu), nu=params_like(st.opt.nu))
        trackers = dataclasses.replace(
            tr, since_fired=latent(tr.since_fired), window_fires=latent(tr.window_fires),
            window_tokens=replicated(tr.window_tokens), last_freq=latent(tr.last_freq),
            thr_ema=replicated(tr.thr_ema), thr_weight=replicated(tr.thr_weight))
        out.append(dataclasses.replace(st, params=params_like(st.params), opt=opt, trackers=trackers,
                                       scale_in=replicated(st.scale_in), scale_out=replicated(st.scale_out)))
    return tuple(out)


def place(tree, shardings):
    """Host or device arrays -> device arrays with ``shardings`` (each process supplies whole
    arrays, which every process holds identically: initial states, restored checkpoints)."""
    import jax

    def put(x, s):
        x = np.asarray(x) if not isinstance(x, jax.Array) else to_host(x)
        return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])

    return jax.tree.map(put, tree, shardings)


def agree_stop(stop, runtime) -> bool:
    """True when any process was asked to stop: all processes must stop at the same step."""
    asked = bool(stop is not None and stop.is_set())
    if runtime is None or runtime.num_processes <= 1:
        return asked
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.array([int(asked)], np.int32))
    return bool(np.asarray(flags).any())


# ---------------------------------------------------------------------------------------------
# the run


def _finished(fs, root: str, settings: R.TrainSettings) -> list[dict] | None:
    """Each SAE's arclens.json when every one holds a finished run of ``settings``; None when
    none does. A folder holding another run is refused (never silently overwritten)."""
    docs, want = [], settings.to_json()
    for spec in settings.saes:
        doc = report.read_arclens_json(fs, sae_folder(root, spec.name))
        if doc is None:
            docs.append(None)
            continue
        diffs = R.differences(doc.get("settings") or {}, want)
        if diffs:
            raise UserError(f"--out {root}/{spec.name} holds an SAE trained with other settings "
                            f"({'; '.join(diffs[:8])}); choose another --out")
        docs.append(doc)
    if all(d is not None and d.get("complete") for d in docs):
        return docs
    return None


def train(settings: R.TrainSettings, source, options: RunOptions, *, mesh=None, runtime=None,
          stop=None) -> TrainResult:
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    from arclens.distributed.mesh import make_mesh
    from arclens.distributed.runtime import Runtime, barrier
    from arclens.sae.train_state import init_state, make_step, step_configs

    t0 = time.perf_counter()
    runtime = runtime or Runtime()
    mesh = mesh or make_mesh(None)
    leader = runtime.is_leader
    fs, root = fsx.get_fs(options.out, options.storage_options)
    configs = step_configs(settings)
    n_steps = settings.n_steps
    want = settings.to_json()

    found = ckpt.load_latest(fs, root)
    if found is None:
        done = _finished(fs, root, settings)
        if done is not None:
            return TrainResult("already-complete", n_steps, [_summary(options.out, d) for d in done],
                               wall_s=time.perf_counter() - t0)
    else:
        header, arrays = found
        diffs = R.differences(header.get("settings") or {}, want)
        if diffs:
            raise UserError(f"--out {options.out} has a checkpoint of a run with other settings; refusing to resume "
                            f"({'; '.join(diffs)}). Rerun with the same settings, or choose another --out")

    def init_all(sample):
        return tuple(init_state(cfg, spec, settings, sample[spec.hook_in], sample[spec.hook_out] if spec.hook_out
                                else None) for cfg, spec in zip(configs, settings.saes))

    batch_sharding = NamedSharding(mesh, PartitionSpec("data", None))
    replicated = NamedSharding(mesh, PartitionSpec())
    pending: list = []
    if found is None:
        start, history, position = 0, [[] for _ in settings.saes], None
        stream = source.device_batches(None, batch_sharding)
        n_init = max(1, min(n_steps, math.ceil(R.INIT_SAMPLE_TOKENS / settings.batch_tokens)))
        pending = [next(stream) for _ in range(n_init)]
        sample = {h: jnp.concatenate([b[h] for b, _ in pending]) for h in settings.hooks}
        states = jax.jit(lambda s: init_all(s))(sample)  # one compile for every SAE's initialisation
        del sample
        shardings = state_shardings(states, mesh)
        states = place(states, shardings)
    else:
        start = int(header["step"])
        history = header.get("metrics") or [[] for _ in settings.saes]
        position = source.position_from_checkpoint(header["position"], arrays)
        template = jax.eval_shape(init_all, {h: jax.ShapeDtypeStruct((2, _width(settings, h)), jnp.float32)
                                             for h in settings.hooks})
        restored = tuple(ckpt.restore_leaves(t, arrays, f"sae{i}", f"--out {options.out}")
                         for i, t in enumerate(template))
        shardings = state_shardings(template, mesh)
        states = place(restored, shardings)
        stream = source.device_batches(position, batch_sharding) if start < n_steps else iter(())
        del arrays

    step_fn = make_step(configs, shardings, replicated)
    every = metrics_interval(n_steps, options.metrics_every)
    progress = TrainProgress(n_steps, settings.batch_tokens, start_step=start, enabled=options.progress and leader)
    last_t, last_step = time.perf_counter(), start
    stopped_by = None
    step = start
    try:
        for step in range(start, n_steps):
            batch, position = pending.pop(0) if pending else next(stream)
            states, metrics = step_fn(states, batch, jnp.int32(step))
            crash_point("sae-step")
            done = step + 1
            if done % every == 0 or done == n_steps:
                host = jax.tree.map(lambda m: float(to_host(m)), metrics)
                now = time.perf_counter()
                rate = (done - last_step) * settings.batch_tokens / max(now - last_t, 1e-9)
                last_t, last_step = now, done
                for i, m in enumerate(host):
                    history[i].append({"step": done, "tokens": done * settings.batch_tokens, **m, "tokens_per_s": rate})
                progress.advance(done, host[0])
            else:
                progress.advance(done)
            stop_now = agree_stop(stop, runtime) and done < n_steps
            if done == n_steps or done % options.checkpoint_every == 0 or stop_now:
                _checkpoint(fs, root, done, states, source, position, history, want, leader, runtime)
            if stop_now:
                stopped_by = getattr(stop, "signal_name", None) or "stop request"
                return TrainResult("stopped", done, wall_s=time.perf_counter() - t0, stopped_by=stopped_by)
    finally:
        progress.close()

    results = []
    if leader:
        host_states = [jax.tree.map(to_host, st) for st in states]
        for cfg, spec, st, lines in zip(configs, settings.saes, host_states, history):
            results.append(_export(fs, root, cfg, spec, st, lines, settings, source, options, n_steps,
                                   time.perf_counter() - t0))
    else:
        for st in states:
            jax.tree.map(to_host, st)  # the same collectives as the leader's, when any are needed
    barrier("arclens-train-sae-export", runtime)
    if leader and not options.keep_checkpoints:
        ckpt.remove_all(fs, root)
    barrier("arclens-train-sae-done", runtime)
    lines0 = history[0] if history and history[0] else []
    return TrainResult("complete", n_steps, results, wall_s=time.perf_counter() - t0,
                       tokens_per_s=steady_tokens_per_s(lines0, settings.batch_tokens))


def _width(settings: R.TrainSettings, hook: str) -> int:
    for s in settings.saes:
        if s.hook_in == hook:
            return s.d_in
        if s.hook_out == hook:
            return s.d_out
    raise KeyError(hook)


def _checkpoint(fs, root, step, states, source, position, history, settings_json, leader, runtime) -> None:
    import jax

    from arclens.distributed.runtime import barrier

    host = [jax.tree.map(to_host, st) for st in states]  # collective where arrays span processes
    # On every process too: the on-the-fly carry is split over the data axis, across processes.
    pos_json, pos_arrays = source.position_to_checkpoint(position)
    if leader:
        arrays = {}
        for i, st in enumerate(host):
            arrays.update({name: np.asarray(v) for name, v in ckpt.leaves_with_names(st, f"sae{i}")})
        arrays.update(pos_arrays)
        ckpt.save(fs, root, step, arrays, {"settings": settings_json, "position": pos_json, "metrics": history})
    barrier(f"arclens-train-sae-checkpoint-{step}", runtime)


def _export(fs, root, cfg, spec, state, lines, settings, source, options, n_steps, wall_s) -> dict:
    from arclens import __version__
    from arclens.sae.export import to_inference
    from arclens.sae.saelens_format import save

    folder = sae_folder(root, spec.name)  # a path on ``fs``
    url = options.out.rstrip("/") + "/" + spec.name  # the same folder as a URL (save() opens its own fs)
    sae = to_inference(cfg, spec, state, model_name=options.model_name)
    save(sae, url, context_size=options.context_size, storage_options=options.storage_options)
    tr = state.trackers
    freq = np.where(np.asarray(tr.last_freq) >= 0, np.asarray(tr.last_freq),
                    np.asarray(tr.window_fires) / max(float(np.asarray(tr.window_tokens)), 1.0))
    report.write_sparsity(fs, folder, freq)
    report.write_metrics(fs, folder, lines)
    report.write_plot(fs, folder, lines, f"{spec.name}  ({spec.arch}, d_sae {spec.d_sae})")
    final = report.final_metrics(lines)
    doc = {
        "name": spec.name, "complete": True, "settings": settings.to_json(), "sae": {
            "arch": spec.arch, "exported_architecture": sae.cfg.architecture, "hook_in": spec.hook_in,
            "hook_out": spec.hook_out, "d_in": spec.d_in, "d_out": spec.d_out, "d_sae": spec.d_sae, "k": spec.k,
            "sparsity_coef": spec.sparsity_coef, "lr": cfg.lr},
        "source": source.describe() if hasattr(source, "describe") else source.fingerprint(), "steps": n_steps, "tokens": n_steps * settings.batch_tokens,
        "final": final, "input_scale": {"in": float(np.asarray(state.scale_in)), "out": float(np.asarray(state.scale_out)),
                                         "folded_into_weights": True},
        "arclens_version": __version__, "wall_s": wall_s,
    }
    report.write_arclens_json(fs, folder, doc)
    return {"name": spec.name, "folder": url, "final": final}


def _summary(out: str, doc: dict) -> dict:
    return {"name": doc.get("name"), "folder": out.rstrip("/") + "/" + str(doc.get("name", "")),
            "final": doc.get("final", {})}
