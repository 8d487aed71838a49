"""`arclens extract`: the command's entry, where argparse's namespace ends (SPEC.md 2 and 3).

``main(args)`` turns the flags into typed settings (pipeline/settings.py), checks all of them
before anything is written, and runs one ``ExtractJob`` (pipeline/job.py): the whole task set
into the store, or, with ``--num-workers``, claimed unit after claimed unit (pipeline/workers.py).

Validation order, cheapest first: the flags, the deployment environment (deployment.py), the
model's config, the hooks against its layers, the prompt options, a local ``--out``, the task set.
The job then loads the tokenizer and the weights (a broken checkpoint fails there); only after
that comes the first write, the store's create-only ``metadata.json``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from arclens.errors import UserError
from arclens.model.hooks import Hook, hooks_from_layers, parse_hooks


def select_hooks(hooks, layers, activations, n_layers: int) -> tuple[Hook, ...]:
    """``--hooks`` or the seed documents' ``--layers ... --activation ...``."""
    if hooks and (layers or activations):
        raise UserError("--hooks: give either --hooks or --layers/--activation, not both")
    if hooks:
        return parse_hooks(hooks, n_layers)
    if activations and not layers:
        raise UserError("--activation needs --layers (e.g. --layers 6 12 18 23 --activation residual)")
    if layers:
        return hooks_from_layers(layers, activations or ["residual"], n_layers)
    raise UserError("extract: name the capture points with --hooks blocks.L.hook_KIND ... or --layers L ... "
                    "--activation residual|mlp|attn")


def check_local_dest(dest: str) -> None:
    """Refuse early (before loading a model) a local DEST that cannot become a store directory.
    Object stores are checked by the first write itself, the create-only metadata.json."""
    if "://" in dest and not dest.startswith("file://"):
        return
    path = Path(dest.removeprefix("file://")).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {dest}: exists and is not a directory")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"--out {dest}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"--out {dest}: {probe} is not writable")


def check_tasks_for_prompts(tasks, prompt) -> None:
    if prompt.with_answer:
        for t in tasks:
            for i, e in enumerate(t.test):
                if e.output is None:
                    raise UserError(f"task {t.task_id}: --with-answer needs test output {i}, which it does not have "
                                    "(pass --solutions?)")


def worker_settings(args, deployment):
    """``--num-workers`` turns worker mode on (nothing else does). The id comes from --worker-id,
    else TPU_WORKER_ID (taken modulo N: on a fleet of single-host VMs it is 0 everywhere, which is
    harmless because ids only choose where a worker starts looking), else None (a random start)."""
    from arclens.pipeline.settings import DEFAULT_CLAIM_TTL_S, WorkerSettings

    if args.num_workers is None:
        for flag, value in (("--worker-id", args.worker_id), ("--tasks-per-unit", args.tasks_per_unit),
                            ("--claim-ttl", args.claim_ttl), ("--idle-exit", args.idle_exit)):
            if value is not None:
                raise UserError(f"{flag} is for independent workers; it needs --num-workers N")
        return None
    worker_id = args.worker_id
    if worker_id is None and deployment.tpu_worker_id is not None and args.num_workers >= 1:
        worker_id = deployment.tpu_worker_id % args.num_workers
    return WorkerSettings(num_workers=args.num_workers, worker_id=worker_id, tasks_per_unit=args.tasks_per_unit,
                          claim_ttl_s=DEFAULT_CLAIM_TTL_S if args.claim_ttl is None else args.claim_ttl,
                          idle_exit_s=args.idle_exit)


def validate(args, deployment):
    """``(ExtractSettings, tasks)`` from the parsed flags; UserError before anything is written."""
    from arclens.data.loaders import load_tasks
    from arclens.model.config import QwenConfig
    from arclens.model.fingerprint import model_fingerprint
    from arclens.model.loading import resolve_model
    from arclens.pipeline.settings import CaptureSettings, ExtractSettings, StoreSettings
    from arclens.prompts import PromptConfig

    if args.shard_mb <= 0:
        raise UserError(f"--shard-mb: expected a positive size in MB, got {args.shard_mb}")
    worker = worker_settings(args, deployment)
    store = StoreSettings(dest=args.out, shard_bytes=int(args.shard_mb * (1 << 20)), writer=args.writer,
                          publish_threads=args.publish_threads, tasks_source=args.tasks)
    model_path = resolve_model(args.model)
    config = QwenConfig.from_pretrained(model_path)
    fingerprint = model_fingerprint(model_path)  # the store's resume check compares by it
    hooks = select_hooks(args.hooks, args.layers, args.activation, config.n_layers)
    prompt = PromptConfig.from_args(args)
    prompt.validate()
    capture = CaptureSettings(
        model=args.model, model_path=Path(model_path), config=config, hooks=hooks, positions=args.positions,
        dtype=args.dtype, prompt=prompt, mesh=args.mesh, tokens_per_batch=args.tokens_per_batch,
        max_shapes=args.max_shapes, capture_memory=args.capture_memory, render_workers=args.render_workers,
        model_fingerprint=fingerprint,
    )
    check_local_dest(args.out)
    if worker is not None:
        from arclens.distributed.units import check_recorded_plan

        check_recorded_plan(args.out, worker.tasks_per_unit)  # a fleet cuts its tasks one way only
    tasks = load_tasks(args.tasks, args.solutions, args.max_tasks)
    if not tasks:
        raise UserError(f"--tasks {args.tasks}: no tasks to extract")
    check_tasks_for_prompts(tasks, prompt)
    return ExtractSettings(capture=capture, store=store, worker=worker), tasks


def main(args) -> int:
    from arclens.deployment import read_deployment
    from arclens.distributed.runtime import ProcessSettings, initialize
    from arclens.pipeline.compile_cache import enable_compile_cache
    from arclens.pipeline.job import ExtractJob

    t0 = time.perf_counter()
    deployment = read_deployment()  # every deployment variable checked before anything happens
    runtime = initialize(ProcessSettings.from_flags(args.coordinator, args.num_processes, args.process_id, deployment))
    settings, tasks = validate(args, deployment)
    enable_compile_cache()  # a resumed or preempted run loads its compiled shapes instead of compiling
    with ExtractJob(settings, runtime) as job:
        if settings.worker is not None:  # independent preemptible workers sharing the store
            from arclens.pipeline.workers import run_worker

            summary = run_worker(job, tasks)
        else:
            summary = job.run(tasks)
    summary.wall_s = time.perf_counter() - t0
    if runtime.is_leader or runtime.multi_process:
        for line in summary.lines():
            print(line)
    return 0
