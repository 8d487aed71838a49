"""`arclens extract`: tasks -> prompts -> forward passes -> an activation store (SPEC.md 2 and 3).

Stages, each in its own thread, joined by bounded queues (overlap.py; design in docs/EXTRACT.md):

    render+schedule (producer) -> device dispatch (main thread) -> device-to-host copy -> writer

1. Everything is validated before anything is written: hooks against the model's layers, the
   model's config and weights, the task set, the prompt options, the destination. The first write
   is the store's ``metadata.json`` (create-only; a resume with other settings is refused there).
2. Resume: the keys in committed index files are skipped; whole tasks are not even rendered.
3. The producer renders windows of tasks ahead of the device, sorts each window into
   length-bucketed batches (batching.py) and builds each batch's token array.
4. The device loop only dispatches: no host synchronisation, so the device never waits on the host
   unless the host is the bottleneck. The copy stage blocks on each batch's captures, the writer
   slices real tokens per sample and commits shards as they fill.
5. SIGTERM/Ctrl-C: stop dispatching, finish what is in flight, commit, exit 0 (stopping.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections import deque
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from arclens.errors import UserError
from arclens.model.hooks import Hook, hooks_from_layers, parse_hooks
from arclens.pipeline.batching import extend_ladder, max_shapes, plan_batches
from arclens.pipeline.crashpoints import crash_point
from arclens.pipeline.overlap import DeviceClock, Stages
from arclens.pipeline.progress import ProgressReporter, RunSummary
from arclens.pipeline.stopping import StopRequest
from arclens.pipeline.writing import BatchWork, instrument_for_crash_tests, write_batch

# Default token budget per device and batch. On an accelerator, 32k tokens of a 0.5B model keep
# the matmuls large; on CPU smaller batches keep the stages overlapping in tests and demos.
DEFAULT_TOKENS_PER_BATCH = {"cpu": 8192}
DEFAULT_TOKENS_PER_BATCH_ACCEL = 32768
PREFETCH_BATCHES = 4  # assembled batches waiting for the device
IN_FLIGHT_BATCHES = 2  # dispatched, not yet read back: bounds device memory for captures
WRITE_QUEUE_BATCHES = 6  # on the host, waiting for the writer: absorbs a slow shard upload
PAD_TOKEN = 0  # any valid id: padded positions are masked out and never stored


@dataclass
class ExtractSettings:
    model_name: str
    model_path: Path
    config: object  # QwenConfig
    hooks: tuple[Hook, ...]
    positions: str
    dtype: str
    shard_bytes: int
    tokens_per_batch: int | None
    prompt: object  # PromptConfig
    tasks: list
    tasks_source: str
    dest: str
    writer_name: str
    mesh_spec: str | None
    model_fingerprint: str | None = None  # model/fingerprint.py; None only for hand-made settings


# ---------------------------------------------------------------------------------------------
# validation (nothing is written until all of it has passed)


def select_hooks(args, n_layers: int) -> tuple[Hook, ...]:
    if args.hooks and (args.layers or args.activation):
        raise UserError("--hooks: give either --hooks or --layers/--activation, not both")
    if args.hooks:
        return parse_hooks(args.hooks, n_layers)
    if args.activation and not args.layers:
        raise UserError("--activation needs --layers (e.g. --layers 6 12 18 23 --activation residual)")
    if args.layers:
        return hooks_from_layers(args.layers, args.activation or ["residual"], n_layers)
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


def validate(args, runtime) -> ExtractSettings:
    from arclens.data.loaders import load_tasks
    from arclens.model.config import QwenConfig
    from arclens.model.loading import resolve_model
    from arclens.prompts import PromptConfig

    if args.shard_mb <= 0:
        raise UserError(f"--shard-mb: expected a positive size in MB, got {args.shard_mb}")
    if args.tokens_per_batch is not None and args.tokens_per_batch < 1:
        raise UserError(f"--tokens-per-batch: expected a positive number, got {args.tokens_per_batch}")
    from arclens.distributed.workers import worker_slot

    max_shapes()  # ARCLENS_MAX_SHAPES, checked before anything is written
    from arclens.pipeline.device import capture_memory_kind

    capture_memory_kind()  # ARCLENS_CAPTURE_MEMORY, likewise

    worker_slot(args)  # --worker-id/--num-workers/TPU_WORKER_ID: refuse bad combinations up front
    model_path = resolve_model(args.model)
    config = QwenConfig.from_pretrained(model_path)
    from arclens.model.fingerprint import model_fingerprint

    fingerprint = model_fingerprint(model_path)  # the store's resume check compares by it
    hooks = select_hooks(args, config.n_layers)
    prompt = PromptConfig.from_args(args)
    prompt.validate()
    check_local_dest(args.out)
    tasks = load_tasks(args.tasks, args.solutions, args.max_tasks)
    if not tasks:
        raise UserError(f"--tasks {args.tasks}: no tasks to extract")
    check_tasks_for_prompts(tasks, prompt)
    writer = args.writer or runtime.writer_name()
    from arclens.store.format import check_writer_name

    try:
        check_writer_name(writer)
    except ValueError as err:
        raise UserError(f"--writer: {err}") from None
    return ExtractSettings(
        model_name=args.model,
        model_path=Path(model_path),
        config=config,
        hooks=hooks,
        positions=args.positions,
        dtype=args.dtype,
        shard_bytes=int(args.shard_mb * (1 << 20)),
        tokens_per_batch=args.tokens_per_batch,
        prompt=prompt,
        tasks=tasks,
        tasks_source=args.tasks,
        dest=args.out,
        writer_name=writer,
        mesh_spec=args.mesh,
        model_fingerprint=fingerprint,
    )


def _config_label(model_path, key: str) -> bool:
    try:
        return bool(json.loads((Path(model_path) / "config.json").read_text()).get(key, False))
    except (OSError, ValueError):
        return False


def is_random_checkpoint(model_path) -> bool:
    """True for a checkpoint written by `arclens random-model` (its config.json says so), so that a
    store of random activations is labelled as such wherever it goes."""
    return _config_label(model_path, "arclens_random")


def is_toy_checkpoint(model_path) -> bool:
    """True for a checkpoint trained by `arclens toy-model` (config.json's ``arclens_toy``)."""
    return _config_label(model_path, "arclens_toy")


TASKS_FINGERPRINT_SCHEME = "tasks-sha256-v1"


def tasks_fingerprint(tasks, with_answer: bool) -> str:
    """``"tasks-sha256-v1:<hex>"`` of what the prompts are rendered from: every task's id, train
    pairs and test inputs, in id order, plus the test outputs when the prompts show them
    (``--with-answer``). A sample key names only (task id, test index, augmentation index), so this
    is what tells a resume that ``--tasks ./x.json`` and ``--tasks /abs/x.json`` (or a copy) hold the
    same tasks, and that an edited file under the same name does not. Test outputs a prompt never
    shows (``--solutions`` without ``--with-answer``) change nothing extracted, so they are left out."""
    digest = hashlib.sha256(TASKS_FINGERPRINT_SCHEME.encode() + b"\0")
    for t in sorted(tasks, key=lambda t: t.task_id):
        test = [e.to_json() if with_answer else {"input": e.to_json()["input"]} for e in t.test]
        item = {"id": t.task_id, "train": [e.to_json() for e in t.train], "test": test}
        digest.update(json.dumps(item, sort_keys=True, separators=(",", ":")).encode() + b"\n")
    return f"{TASKS_FINGERPRINT_SCHEME}:{digest.hexdigest()}"


def store_metadata(s: ExtractSettings) -> dict:
    """SPEC.md section 3 metadata; ``format``, ``version``, ``created_at`` and ``arclens_version``
    are filled in by the store. ``model.fingerprint`` and ``tasks.fingerprint`` are extensions of
    the SPEC's fields: a resume compares the model and the tasks by them rather than by how
    ``--model`` and ``--tasks`` were spelled (store/format.py ``FINGERPRINTED_SECTIONS``)."""
    model = {"name": s.model_name, "config": s.config.to_json(), "dtype": s.dtype,
             "random_weights": is_random_checkpoint(s.model_path)}
    if is_toy_checkpoint(s.model_path):  # only then, so stores of other models keep their metadata
        model["toy_weights"] = True
    if s.model_fingerprint is not None:
        model["fingerprint"] = s.model_fingerprint
    return {
        "model": model,
        "hooks": [h.name for h in s.hooks],
        "dtype": s.dtype,
        "d_model": s.config.d_model,
        "positions": s.positions,
        "prompt": s.prompt.to_json(),
        "tasks": {"source": s.tasks_source, "count": len(s.tasks),
                  "fingerprint": tasks_fingerprint(s.tasks, s.prompt.with_answer)},
    }


# ---------------------------------------------------------------------------------------------
# the run


def main(args) -> int:
    from arclens.distributed.runtime import initialize

    t0 = time.perf_counter()
    runtime = initialize(args)
    settings = validate(args, runtime)
    from arclens.pipeline.compile_cache import enable_compile_cache

    enable_compile_cache()  # a resumed or preempted run loads its compiled shapes instead of compiling
    from arclens.distributed.workers import is_worker_run

    if is_worker_run(args):  # independent preemptible workers sharing the store (distributed/workers.py)
        from arclens.distributed.extract_workers import extract_as_worker

        summary = extract_as_worker(settings, runtime, args)
    else:
        summary = extract(settings, runtime)
    summary.wall_s = time.perf_counter() - t0
    if runtime.is_leader or runtime.multi_process:
        for line in summary.lines():
            print(line)
    return 0


def load_model_params(s: ExtractSettings, mesh):
    import jax.numpy as jnp

    from arclens.model.loading import load_params

    dtype = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}[s.dtype]
    return load_params(s.model_path, s.config, dtype, mesh=mesh)


def extract(s: ExtractSettings, runtime, *, progress: bool = True, window_samples: int | None = None,
            render_workers: int | None = None) -> RunSummary:
    """Run the whole job for validated settings; returns the summary (wall time excluded)."""
    import jax

    from arclens.distributed.mesh import make_mesh
    from arclens.distributed.runtime import barrier
    from arclens.pipeline.device import CaptureRunner
    from arclens.pipeline.rendering import (
        DEFAULT_WINDOW_SAMPLES,
        Renderer,
        default_workers,
        pending_work,
        windows,
    )
    from arclens.prompts import load_tokenizer
    from arclens.store.writer import StoreWriter, committed_keys, open_or_create_store

    tokenizer = load_tokenizer(str(s.model_path))
    mesh = make_mesh(s.mesh_spec)
    params = load_model_params(s, mesh)  # a broken checkpoint fails here, before the first write

    open_or_create_store(s.dest, store_metadata(s))
    committed = committed_keys(s.dest)
    barrier("arclens-extract-resume", runtime)  # everyone listed the same commits before anyone writes
    work = pending_work(s.tasks, s.prompt, committed)
    summary = RunSummary(skipped_committed=work.skipped)
    if not work.n_samples:
        print(f"arclens extract: all {work.total_keys} samples are already in {s.dest}; nothing to do", file=sys.stderr)
        return summary

    runner = CaptureRunner(params, s.config, s.hooks, s.positions, s.dtype, mesh)
    per_device = s.tokens_per_batch or DEFAULT_TOKENS_PER_BATCH.get(jax.default_backend(), DEFAULT_TOKENS_PER_BATCH_ACCEL)
    dp = runner.data_parallel()
    workers = default_workers(work.n_samples) if render_workers is None else render_workers
    renderer = Renderer(s.model_path, tokenizer, s.prompt, work.todo_keys, workers)
    writer = StoreWriter(s.dest, s.writer_name, s.shard_bytes)
    instrument_for_crash_tests(writer)
    reporter = ProgressReporter(work.n_samples, enabled=progress and runtime.is_leader)
    stop = StopRequest()
    try:
        with stop.installed() if not runtime.multi_process else _no_handlers():
            _run_stages(
                s, runtime, runner, renderer, windows(work.tasks, s.prompt, window_samples or DEFAULT_WINDOW_SAMPLES),
                writer, reporter, stop, summary, tokens_per_batch=per_device * dp, row_multiple=dp,
            )
    finally:
        reporter.close()
        renderer.close()
        runner.close()
    summary.shards = len(writer.commits)
    summary.bytes = sum(c.bytes for c in writer.commits)
    summary.compile_s = runner.compile_seconds
    summary.stopped_by = stop.signal_name
    if not runtime.multi_process and not stop.is_set() and summary.samples != work.n_samples:
        # Never report success for a run that silently skipped samples (a rerun would resume them).
        raise RuntimeError(f"extract wrote {summary.samples} samples of the {work.n_samples} it scheduled")
    return summary


class _no_handlers:
    # Multi-process runs leave SIGTERM to jax's preemption notifier (see _should_stop).
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _should_stop(step: int, stop: StopRequest, runtime) -> bool:
    if not runtime.multi_process:
        return stop.is_set()
    # Every process must stop at the same batch or the others hang in the next SPMD step. jax's
    # preemption sync point answers the same for all processes at a given step.
    try:
        from jax.experimental import multihost_utils

        if multihost_utils.reached_preemption_sync_point(step):
            stop.request("SIGTERM (preemption sync point)")
            return True
    except Exception as err:  # noqa: BLE001 - no preemption service in this jax.distributed setup
        _warn_once(f"no graceful stop across processes: jax preemption sync point unavailable ({err})")
    return False


_warned: set[str] = set()


def _warn_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        print(f"arclens extract: {msg}", file=sys.stderr)


def _assemble(batch, index: int, samples: list, local: slice) -> BatchWork:
    t = batch.seq_len
    tokens = np.full((local.stop - local.start, t), PAD_TOKEN, np.int32)
    lengths = np.ones(local.stop - local.start, np.int32)  # padding rows: 1, never 0 (no empty softmax)
    mine: dict = {}
    real = 0
    for g, i in enumerate(batch.rows):
        if local.start <= g < local.stop:
            sample = samples[i]
            n = len(sample.token_ids)
            tokens[g - local.start, :n] = sample.token_ids
            lengths[g - local.start] = n
            mine[g] = sample
            real += n
    return BatchWork(index, batch, mine, tokens, lengths, real)


def _oom(err: BaseException, shape: tuple[int, int], tokens_per_batch: int) -> BaseException:
    from arclens.errors import device_out_of_memory

    b, t = shape
    return device_out_of_memory(
        err, f"a batch of {b} x {t} tokens",
        f"lower --tokens-per-batch (this run: {tokens_per_batch} for the whole mesh), or shard the model "
        "over more devices with --mesh DATA,MODEL")


def _run_stages(s, runtime, runner, renderer, wins, writer, reporter, stop, summary, *, tokens_per_batch, row_multiple):
    stages = Stages()
    busy = stages.busy
    to_device = stages.channel(PREFETCH_BATCHES)
    to_host = stages.channel(IN_FLIGHT_BATCHES)
    to_writer = stages.channel(WRITE_QUEUE_BATCHES)
    clock = DeviceClock()
    stop_producing = StopRequest()
    n_shapes = max_shapes()

    def produce() -> None:
        ladder: tuple[int, ...] = ()
        queue_of_windows = iter(wins)
        rendering = deque(renderer.submit(w) for w in islice(queue_of_windows, 2))
        index = 0
        while rendering:
            with busy.measure("tokenize"):
                samples = renderer.collect(rendering.popleft())
            nxt = next(queue_of_windows, None)
            if nxt is not None:
                rendering.append(renderer.submit(nxt))  # keeps one window rendering ahead
            if not samples:
                continue
            lengths = [len(x.token_ids) for x in samples]
            ladder = extend_ladder(ladder, lengths) if ladder else None
            schedule = plan_batches(lengths, [x.key for x in samples], tokens_per_batch=tokens_per_batch,
                                    ladder=ladder, max_shapes=n_shapes, row_multiple=row_multiple)
            ladder = schedule.ladder
            runner.precompile(schedule.shapes)
            summary.padded_tokens += schedule.padded_tokens
            summary.shapes |= schedule.shapes
            for batch in schedule.batches:
                if stop_producing.is_set():
                    to_device.close()
                    return
                with busy.measure("tokenize"):
                    item = _assemble(batch, index, samples, runner.local_rows(batch.shape))
                to_device.put(item)
                index += 1
        to_device.close()

    def dispatch() -> None:
        for step, item in enumerate(to_device):
            if _should_stop(step, stop, runtime):
                stop_producing.request("stop")
                for _ in to_device:  # let the producer see the flag and finish
                    pass
                break
            with busy.measure("dispatch"):
                try:
                    out = runner.dispatch(item.tokens, item.lengths, item.batch.shape)
                except Exception as err:  # re-raised, as DeviceOutOfMemory if it is one
                    raise _oom(err, item.batch.shape, tokens_per_batch) from err
            item.tokens = item.lengths = None
            item.dispatched_at = time.perf_counter()
            crash_point("batch-dispatched")
            to_host.put((item, out))
            summary.batches += 1
        to_host.close()

    def copy_to_host() -> None:
        for item, out in to_host:
            try:
                host = runner.fetch(out)
            except Exception as err:  # an execution error surfaces here, asynchronously
                raise _oom(err, item.batch.shape, tokens_per_batch) from err
            clock.completed(item.dispatched_at, time.perf_counter())
            to_writer.put((item, host))
        to_writer.close()

    def write() -> None:
        for item, host in to_writer:
            with busy.measure("write"):
                n, stored = write_batch(writer, item, host, s.positions)
            summary.samples += n
            summary.tokens_stored += stored
            summary.prompt_tokens += item.real_tokens
            reporter.advance(n, item.real_tokens)
        with busy.measure("write"):
            writer.flush()

    stages.start("produce", produce)
    stages.start("copy", copy_to_host)
    stages.start("write", write)
    stages.run_here(dispatch)
    stages.join()
    summary.time_split = {
        "tokenize": busy.seconds.get("tokenize", 0.0),
        "device": clock.seconds,
        "write": busy.seconds.get("write", 0.0),
        "compile wait": runner.compile_wait_seconds,
    }
