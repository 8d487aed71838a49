"""`arclens features`: typed settings, the checks made before any work, and the one streaming pass."""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from arclens.errors import UserError


@dataclass(frozen=True)
class FeaturesSettings:
    sae: str
    out: Path
    store: str | None = None  # the store source; else the model source (model + tasks + prompt)
    model: str | None = None
    tasks: str | None = None
    solutions: str | None = None
    max_tasks: int | None = None
    prompt: object | None = None  # prompts.PromptConfig, for the model source
    dtype: str = "bfloat16"  # the model source's compute and capture dtype (as `arclens extract --dtype`)
    allow_other_model: bool = False  # the model source: skip the SAE's model_name/fingerprint check
    top_k: int = 32
    quantiles: int = 10
    quantile_examples: int = 5
    context: int = 8
    logits: int = 10
    batch_tokens: int | None = None  # None: default_store_batch_tokens from a store, the extract job's default from a model
    progress: bool = True
    # where the per-pair counts are made (--tallies; features/accumulate.py): every choice writes
    # the same files (tests/features/test_tallies.py)
    tallies: str = "auto"
    # processes folding the host's part, a range of latents each (--fold-workers; None: auto,
    # features/accumulate.fold_workers_for): every number writes the same files
    fold_workers: int | None = None

    def check(self) -> None:
        for flag, value, low in (("--top-k", self.top_k, 1), ("--quantiles", self.quantiles, 1),
                                 ("--quantile-examples", self.quantile_examples, 1), ("--context", self.context, 0),
                                 ("--logits", self.logits, 0), ("--batch-tokens", self.batch_tokens, 1),
                                 ("--fold-workers", self.fold_workers, 1)):
            if value is not None and value < low:
                raise UserError(f"{flag}: expected a number >= {low}, got {value}")
        from arclens.features.accumulate import TALLIES
        from arclens.features.tally import MAX_QUANTILES

        if self.tallies not in TALLIES:
            raise UserError(f"--tallies: expected one of {', '.join(TALLIES)}, got {self.tallies!r}")
        if self.tallies == "device" and self.quantiles >= MAX_QUANTILES:
            raise UserError(f"--tallies device: --quantiles must be below {MAX_QUANTILES}, got {self.quantiles}")


@dataclass
class Prepared:
    """Everything the pass needs, checked: nothing has been written yet."""

    sae: object
    source: object
    header: dict
    prompt: dict
    model_path: Path | None
    tokenizer: object | None
    batch_tokens: int  # what the source packs a batch to (a store), or the job's tokens per device (a model)

    def close(self) -> None:
        close = getattr(self.source, "close", None)
        if close is not None:
            close()


STORE_BATCH_TOKENS = 4096  # tokens a store source packs into one batch by default on the CPU
ACCELERATOR_BATCH_TOKENS = 32768  # ... and at most on an accelerator
PRE_ACTIVATION_BYTES = 2 << 30  # a default batch's float32 pre-activations [N, d_sae] stay within this
SOURCE_AHEAD = 2  # batches a store source builds ahead in its own thread (features/sources.py)


def default_store_batch_tokens(d_sae: int, backend: str) -> int:
    """`--batch-tokens` from a store when it is not given: 4096 on the CPU backend; on an
    accelerator the largest power of two up to 32768 (and at least 4096) whose float32
    pre-activations ``[N, d_sae]`` fit in 2 GiB. There the host bounds the pass, and its cost a
    firing pair falls from ~19 ns at 4k-token batches to ~11 at 32k (docs/BENCHMARKS.md)."""
    if backend == "cpu":
        return STORE_BATCH_TOKENS
    n = ACCELERATOR_BATCH_TOKENS
    while n > STORE_BATCH_TOKENS and n * d_sae * 4 > PRE_ACTIVATION_BYTES:
        n //= 2
    return n


def _warn(msg: str) -> None:
    print(f"arclens: {msg}", file=sys.stderr)


def resolve_optional_model(name: str | None, explicit: bool, metadata_model: dict) -> Path | None:
    """The model for token strings and logits: checked against the store's fingerprint. A model
    named only by the store that cannot be found here is skipped with a warning."""
    from arclens.model.loading import resolve_model

    if not name:
        return None
    try:
        path = resolve_model(name)
    except UserError:
        if explicit:
            raise
        _warn(f"the store's model {name} is not available here; token strings and logits are left out "
              "(pass --model)")
        return None
    stored = metadata_model.get("fingerprint")
    if stored:
        from arclens.model.fingerprint import model_fingerprint
        from arclens.store.metadata import fingerprints_comparable

        now = model_fingerprint(path)
        if fingerprints_comparable(stored, now) and stored != now:
            raise UserError(f"--model {name}: not the model this store was made with (fingerprint {now}, the "
                            f"store has {stored}); its unembedding would give wrong logits")
    return Path(path)


def prepare_store(s: FeaturesSettings) -> Prepared:
    import arclens
    from arclens.data.loaders import load_tasks
    from arclens.features.output import check_out
    from arclens.features.sources import StoreSource, TaskGrids
    from arclens.sae import load

    sae = load(s.sae)
    hook = sae.cfg.hook_name
    if not hook:
        raise UserError(f"--sae {s.sae}: its cfg.json names no metadata.hook_name, so its hook is unknown")
    store = arclens.open_store(s.store)
    if hook not in store.hooks:
        raise UserError(f"--sae {s.sae}: its hook {hook} is not in the store {s.store}, which has "
                        f"{', '.join(store.hooks)}")
    if sae.cfg.d_in != store.d_model:
        raise UserError(f"--sae {s.sae}: d_in {sae.cfg.d_in} does not match the store's d_model {store.d_model}")
    meta = store.metadata
    if meta.get("positions") == "generated":
        raise UserError(f"--store {s.store}: an infer store (positions 'generated'); its answer cells are the "
                        "model's own output, whose colours the task does not give. Use an extract store")
    prompt = dict(meta.get("prompt") or {})
    source_name = s.tasks or (meta.get("tasks") or {}).get("source")
    if not source_name:
        raise UserError(f"--store {s.store}: its metadata names no task source; pass --tasks")
    tasks = load_tasks(source_name, s.solutions)
    stored_fp = (meta.get("tasks") or {}).get("fingerprint")
    if stored_fp:
        from arclens.store.metadata import fingerprints_comparable, tasks_fingerprint

        with_answer = bool(prompt.get("with_answer"))
        now = tasks_fingerprint(tasks, with_answer)
        count = (meta.get("tasks") or {}).get("count")
        if now != stored_fp and isinstance(count, int) and 0 < count < len(tasks):
            # extract --max-tasks N keeps the first N tasks in id order (data.loaders.load_tasks)
            first = tasks_fingerprint(tasks[:count], with_answer)
            if first == stored_fp:
                tasks, now = tasks[:count], first
        if fingerprints_comparable(stored_fp, now) and stored_fp != now:
            raise UserError(f"--tasks {source_name}: not the tasks this store was made from (fingerprint "
                            f"{now[:30]}..., the store has {stored_fp[:30]}...); pass them with --tasks "
                            "(and --solutions for a Kaggle challenges file)")
    model_meta = meta.get("model") or {}
    model_path = resolve_optional_model(s.model or model_meta.get("name"), s.model is not None, model_meta)
    tokenizer = _model_checks(model_path, store.d_model)
    check_out(s.out)
    source = StoreSource(store, hook, TaskGrids(tasks, f"--tasks {source_name}"))
    import jax

    batch_tokens = s.batch_tokens or default_store_batch_tokens(sae.cfg.d_sae, jax.default_backend())
    header = {"sae": str(Path(s.sae).resolve()) if "://" not in s.sae else s.sae,
              "sae_config": _sae_config(sae),
              "source": {"kind": "store", "store": s.store, "hook": hook, "positions": meta.get("positions"),
                         "model": str(model_path) if model_path else model_meta.get("name"),
                         "model_known": model_path is not None, "tasks": source_name, "prompt": prompt,
                         "n_samples": source.n_samples, "random_weights": model_meta.get("random_weights")},
              "settings": _settings_json(s, batch_tokens)}
    return Prepared(sae, source, header, prompt, model_path, tokenizer, batch_tokens)


def prepare_model(s: FeaturesSettings) -> Prepared:
    """The model source: every check of the SAE, the model, the prompts, the tasks and --out,
    then the extract job (which loads the weights; still nothing written)."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    from arclens.data.loaders import load_tasks
    from arclens.features.model_source import ModelSource
    from arclens.features.output import check_out
    from arclens.features.sources import TaskGrids
    from arclens.model.config import QwenConfig
    from arclens.model.fingerprint import model_fingerprint
    from arclens.model.hooks import parse_hook
    from arclens.model.loading import is_random_checkpoint, resolve_model
    from arclens.pipeline.eval_sae import check_model
    from arclens.pipeline.extract import check_tasks_for_prompts
    from arclens.pipeline.job import ExtractJob
    from arclens.pipeline.settings import CaptureSettings
    from arclens.prompts import PromptConfig
    from arclens.sae import load
    from arclens.sae.edits import check_sae_for_model
    from arclens.store.metadata import model_section, tasks_section

    if s.model is None or s.tasks is None:
        raise UserError("arclens features: give --store DEST, or --model MODEL --tasks SRC (the model source)")
    sae = load(s.sae)
    hook = sae.cfg.hook_name
    if not hook:
        raise UserError(f"--sae {s.sae}: its cfg.json names no metadata.hook_name, so its hook is unknown")
    model_path = Path(resolve_model(s.model))
    config = QwenConfig.from_pretrained(model_path)
    check_sae_for_model(sae, config, f"--sae {s.sae}")  # its hooks are this model's, its d_in the model's width
    fingerprint = model_fingerprint(model_path)
    if not s.allow_other_model:
        check_model(sae, s.sae, s.model, model_path, fingerprint)
    prompt = s.prompt or PromptConfig()
    prompt.validate()
    capture = CaptureSettings(model=s.model, model_path=model_path, config=config,
                              hooks=(parse_hook(hook, config.n_layers),), positions="all", dtype=s.dtype,
                              prompt=prompt, tokens_per_batch=s.batch_tokens, model_fingerprint=fingerprint)
    tasks = load_tasks(s.tasks, s.solutions, s.max_tasks)
    if not tasks:
        raise UserError(f"--tasks {s.tasks}: no tasks")
    check_tasks_for_prompts(tasks, capture.prompt)
    check_out(s.out)
    job = ExtractJob(capture)  # loads the tokenizer and the weights: a broken checkpoint fails here
    try:
        # The activations arrive sharded over the job's mesh; the SAE goes to every device of it.
        sae = jax.device_put(sae, NamedSharding(job.mesh, PartitionSpec()))
        source = ModelSource(job, tasks, hook, TaskGrids(tasks, f"--tasks {s.tasks}"))
    except BaseException:
        job.close()
        raise
    batch_tokens = job.planner.tokens_per_batch // job.runner.data_parallel()
    c = capture
    random_weights = is_random_checkpoint(c.model_path)
    header = {"sae": str(Path(s.sae).resolve()) if "://" not in s.sae else s.sae,
              "sae_config": _sae_config(sae),
              "source": {"kind": "model", "hook": hook, "positions": "all", "model": str(c.model_path),
                         "model_known": True, "tasks": s.tasks, "prompt": c.prompt.to_json(),
                         "n_samples": source.n_samples, "random_weights": random_weights,
                         # what an `arclens extract` of this job would record in its metadata.json
                         "model_metadata": model_section(c.model, c.config.to_json(), c.dtype,
                                                         fingerprint=c.model_fingerprint,
                                                         random_weights=random_weights),
                         "tasks_metadata": tasks_section(s.tasks, tasks, c.prompt.with_answer)},
              "settings": _settings_json(s, batch_tokens)}
    return Prepared(sae, source, header, c.prompt.to_json(), Path(c.model_path), job.tokenizer, batch_tokens)


def _model_checks(model_path: Path | None, d_model: int):
    if model_path is None:
        return None
    from arclens.model.config import QwenConfig
    from arclens.prompts import load_tokenizer

    config = QwenConfig.from_pretrained(model_path)
    if config.d_model != d_model:
        raise UserError(f"--model {model_path}: hidden size {config.d_model}, but the activations have {d_model}")
    return load_tokenizer(str(model_path))


def _sae_config(sae) -> dict:
    c = sae.cfg
    return {"architecture": c.architecture, "d_in": c.d_in, "d_sae": c.d_sae, "d_out": c.d_out, "k": c.k,
            "hook_name": c.hook_name, "hook_name_out": c.hook_name_out, "model_name": c.model_name}


def _settings_json(s: FeaturesSettings, batch_tokens: int) -> dict:
    keep = ("top_k", "quantiles", "quantile_examples", "context", "logits")
    return {**{k: v for k, v in asdict(s).items() if k in keep}, "batch_tokens": batch_tokens}


def _complete(acc, source, pending, progress) -> None:
    """Fold in a dispatched batch (which waits for its device results), then hand its
    activations' buffer back to the source for a later batch."""
    acc.complete(pending)
    batch = pending[0]
    source.release(batch)
    progress.advance(len(batch.samples), int(batch.valid.sum()))


def run(s: FeaturesSettings) -> dict:
    """The whole command: checks, one pass, the files. Returns a small summary."""
    t0 = time.perf_counter()
    s.check()
    p = prepare_store(s) if s.store is not None else prepare_model(s)
    try:
        return _run(s, p, t0)
    finally:
        p.close()


def _run(s: FeaturesSettings, p: Prepared, t0: float) -> dict:
    import numpy as np

    from arclens.features.accumulate import Accumulator
    from arclens.features.device import encode_batch
    from arclens.features.logits import TokenStrings, logit_effect
    from arclens.features.output import write_fdir

    source, sae = p.source, p.sae
    from arclens.pipeline.progress import ProgressReporter

    progress = ProgressReporter(source.n_samples, enabled=s.progress)
    acc, pending = None, None
    try:
        acc = Accumulator(sae.cfg.d_sae, source.plan.group_sizes, top_k=s.top_k, n_intervals=s.quantiles,
                          per_interval=s.quantile_examples, max_tokens=source.n_tokens, tallies=s.tallies,
                          fold_workers=s.fold_workers)  # (its workers, if any, start here: closed below)
        for batch in source.batches(p.batch_tokens, ahead=SOURCE_AHEAD):
            dispatched = acc.dispatch(batch, *encode_batch(sae, batch))
            if pending is not None:  # the host folds in the previous batch while the device runs this one
                _complete(acc, source, pending, progress)
            pending = dispatched
        if pending is not None:
            _complete(acc, source, pending, progress)
        acc.finish()
        progress.close()
        t_pass = time.perf_counter()
        logits = None
        strings = TokenStrings(p.tokenizer)
        if p.model_path is not None and s.logits > 0:
            logits = logit_effect(np.asarray(sae.W_dec), p.model_path, s.logits,
                                  n_vocab=len(p.tokenizer) if p.tokenizer is not None else None)
        write_fdir(s.out, acc, header=p.header, keys=source.plan.keys, prompt=p.prompt, logits=logits,
                   strings=strings, context=s.context)
    finally:
        if acc is not None:
            acc.close()  # (the fold workers: after they wrote their examples, or if the command stopped early)
        progress.close()
    t_end = time.perf_counter()
    # pass: checks and the streaming pass (grows with tokens); write: logits and the files (with d_sae)
    return {"n_tokens": acc.n_tokens, "d_sae": acc.d_sae, "seconds": t_end - t0, "pass_seconds": t_pass - t0,
            "write_seconds": t_end - t_pass}
