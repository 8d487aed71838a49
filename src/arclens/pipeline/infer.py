"""`arclens infer`: greedy generation -> parse -> revert -> vote -> submission.json; the run.

The command's entry (``main``: flags -> ``InferSettings``) and the run (``infer``): windows of
whole tasks, rendered, batched as one ``generate()`` call over the window would batch them, run on
the device replicas (replicas.py), written window by window in order. The files and the resume
are predictions.py; the vote into ``submission.json`` is submission.py (docs/INFERENCE.md).

- ``activations/`` (with ``--hooks``): an activation store (SPEC.md section 3) of the hooks at
  every generated token; committed before the window's predictions are appended, and resumed by
  its committed keys.
- Interventions (``--splice/--ablate/--steer``, SPEC.md section 6; infer_edits.py): the edits are
  built once (``settings.edits``), placed on each device with its replica's weights, and handed to
  every ``generate()`` call with the prompts' token roles; infer.json, every prediction line and
  the ``--hooks`` store record them. No edits: the run is exactly as without the feature.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from arclens.data.tasks import Task
from arclens.errors import UserError
from arclens.pipeline.generated import GeneratedActivations
from arclens.pipeline.predictions import (
    EDITS_KEY,
    FINGERPRINT_KEY,
    PREDICTIONS,
    SUBMISSION,
    append_lines,
    atomic_write_json,
    check_settings,
    completed_tasks,
    prediction_record,
    read_predictions,
    rewrite_lines,
)
from arclens.pipeline.replicas import DeviceReplicas
from arclens.pipeline.submission import build_submission

DEFAULT_BATCH_SIZE = {"cpu": 8}  # rows per batch by JAX backend; 64 on accelerators
WINDOW_BATCHES = 4  # a window (the unit of writing and of resume) holds about this many batches
MAX_SIDE = 30


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class InferSettings:
    model: str
    model_path: Path
    config: object  # QwenConfig
    dtype: str
    prompt: object  # PromptConfig
    tasks: list[Task]
    tasks_source: str
    out: Path
    max_new_tokens: int
    batch_size: int
    hooks: tuple = ()
    chunk: int = 32
    model_fingerprint: str | None = None
    devices: int = 1  # the first N of jax.local_devices(); not a setting of the run (outputs do not depend on it)
    edits: tuple = ()  # infer_edits.RunEdit, sorted by hook

    def to_json(self) -> dict:
        edits = {EDITS_KEY: [e.record for e in self.edits]} if self.edits else {}
        return {
            "model": self.model,
            FINGERPRINT_KEY: self.model_fingerprint,
            "model_config": self.config.to_json(),
            "dtype": self.dtype,
            "prompt": self.prompt.to_json(),
            "max_new_tokens": self.max_new_tokens,
            "hooks": [h.name for h in self.hooks],
            **edits,
        }


@dataclass
class InferSummary:
    tasks: int = 0
    skipped_tasks: int = 0
    samples: int = 0
    new_tokens: int = 0
    parsed: int = 0
    stop_reasons: dict = field(default_factory=dict)
    generate_s: float = 0.0
    wall_s: float = 0.0
    device_kind: str = ""
    device_batches: list[int] = field(default_factory=list)  # batches generated on each device used
    edits: str = ""  # infer_edits.describe of the run's edits, when it has some

    def lines(self) -> list[str]:
        rate = self.new_tokens / self.generate_s if self.generate_s else 0.0
        if self.device_batches:
            devices = (f"devices: {len(self.device_batches)} ({self.device_kind}), one model replica each; "
                       f"batches per device: {', '.join(map(str, self.device_batches))}")
        else:
            devices = "devices: none used (nothing to generate)"
        return [
            f"tasks: {self.tasks} ({self.skipped_tasks} already predicted, skipped)",
            f"samples generated: {self.samples}, parsed into a grid: {self.parsed}, stops: {self.stop_reasons}",
            f"new tokens: {self.new_tokens} in {self.generate_s:.1f} s ({rate:.1f} tokens/s); wall {self.wall_s:.1f} s",
            devices,
        ] + ([f"edits: {self.edits}"] if self.edits else [])


def _answer_budget(tokenizer, encoder) -> int:
    """Tokens for the largest ARC answer (30x30) in this encoder, after the prompt's ```grid,
    plus a little room for the stop token."""
    grid = tuple(tuple((r * 7 + c * 3) % 10 for c in range(MAX_SIDE)) for r in range(MAX_SIDE))
    text = encoder.to_text(grid)
    text = text.removeprefix("```grid")
    return len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 8


def eos_ids(model_path: Path, tokenizer, vocab_size: int) -> tuple[int, ...]:
    """Every id the checkpoint calls end-of-sequence (config.json, generation_config.json, the
    tokenizer) plus Qwen's chat terminators when the vocabulary has them."""
    ids: set[int] = set()
    for name in ("config.json", "generation_config.json"):
        try:
            v = json.loads((model_path / name).read_text()).get("eos_token_id")
        except (OSError, json.JSONDecodeError):
            continue
        ids.update([v] if isinstance(v, int) else [x for x in (v or []) if isinstance(x, int)])
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in ("<|im_end|>", "<|endoftext|>") if t in vocab)
    return tuple(sorted(i for i in ids if 0 <= i < vocab_size))


def _default_batch_size() -> int:
    import jax

    return DEFAULT_BATCH_SIZE.get(jax.default_backend(), 64)


def _device_count(requested: int | None) -> int:
    """``--devices``: how many of this process's local devices to use (default: all)."""
    import jax

    local = jax.local_devices()
    if requested is None:
        return len(local)
    if requested < 1:
        raise UserError(f"--devices: expected a positive number, got {requested}")
    if requested > len(local):
        raise UserError(
            f"--devices {requested}: this host has {len(local)} local {local[0].platform} device(s); "
            f"use --devices {len(local)} or fewer (the default uses them all)"
        )
    return requested


def validate(args) -> InferSettings:
    from arclens.data.loaders import load_tasks
    from arclens.model.config import QwenConfig
    from arclens.model.fingerprint import model_fingerprint
    from arclens.model.hooks import parse_hooks
    from arclens.model.loading import resolve_model
    from arclens.pipeline.infer_edits import edits_from_args
    from arclens.prompts import PromptConfig, create_grid_encoder, load_tokenizer

    if args.num_processes not in (None, 1) or args.coordinator:
        raise UserError(
            "infer runs as one process (on its local devices, --devices N); --coordinator/--num-processes "
            "are accepted by extract only (split the tasks with `arclens streams` and run one infer per "
            "stream instead)"
        )
    if args.mesh:
        raise UserError(
            "infer does not shard the model: --mesh is accepted by extract only; infer runs one model "
            "replica per local device (--devices N, default all)"
        )
    prompt = PromptConfig.from_args(args)
    prompt.validate()
    if prompt.with_answer:
        raise UserError("--with-answer shows the model the answer; infer predicts it (drop --with-answer)")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens: expected a positive number, got {args.max_new_tokens}")
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size: expected a positive number, got {args.batch_size}")
    devices = _device_count(getattr(args, "devices", None))
    tasks = load_tasks(args.tasks, args.solutions, args.max_tasks)
    model_path = resolve_model(args.model)
    config = QwenConfig.from_pretrained(model_path)
    hooks = parse_hooks(args.hooks, config.num_hidden_layers) if args.hooks else ()
    fingerprint = model_fingerprint(model_path)  # before --out is touched: a bad checkpoint writes nothing
    edits = edits_from_args(args, config, model_path, fingerprint)  # each SAE loaded and checked
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create the folder ({e.strerror})") from None
    if not out.is_dir():
        raise UserError(f"--out {out}: not a folder")
    tokenizer = load_tokenizer(str(model_path))
    max_new = args.max_new_tokens or _answer_budget(tokenizer, create_grid_encoder(prompt.encoder))
    return InferSettings(
        model=args.model, model_path=model_path, config=config, dtype=args.dtype, prompt=prompt, tasks=tasks,
        tasks_source=args.tasks, out=out, max_new_tokens=max_new,
        batch_size=args.batch_size or _default_batch_size(), hooks=hooks, model_fingerprint=fingerprint,
        devices=devices, edits=edits,
    )


def main(args) -> int:
    from arclens.deployment import read_deployment

    t0 = time.perf_counter()
    read_deployment()  # every deployment variable checked before anything is written
    settings = validate(args)
    from arclens.pipeline.compile_cache import enable_compile_cache

    enable_compile_cache()
    summary = infer(settings)
    summary.wall_s = time.perf_counter() - t0
    for line in summary.lines():
        print(line)
    print(f"wrote {settings.out / SUBMISSION} and {settings.out / PREDICTIONS}")
    return 0


def _windows(tasks: Sequence[Task], keys: dict[str, set[str]], window_samples: int) -> list[list[Task]]:
    out, cur, n = [], [], 0
    for t in tasks:
        cur.append(t)
        n += len(keys[t.task_id])
        if n >= window_samples:
            out.append(cur)
            cur, n = [], 0
    if cur:
        out.append(cur)
    return out


def infer(s: InferSettings, *, progress: bool = True, edits=None) -> InferSummary:
    """Predict every task of ``s`` not predicted yet (resume), then write the submission.
    ``edits``: ``{hook: Edit}`` from Python (any edit, recorded by infer_edits.library_edits), or
    None: ``s.edits`` (the flags' edits; none: the model as is)."""
    from dataclasses import replace

    from arclens.pipeline.infer_edits import describe, library_edits
    from arclens.pipeline.schedule import task_keys

    if edits:
        if s.edits:
            raise ValueError("infer: edits given both in the settings and as an argument")
        s = replace(s, edits=library_edits(edits, s.config.n_layers))
    check_settings(s.out, s.to_json())
    pred_path = s.out / PREDICTIONS
    expected = {t.task_id: set(task_keys(t, s.prompt)) for t in s.tasks}
    records = read_predictions(pred_path)
    done = completed_tasks(records, expected)
    # A partial task of this run's set (a torn write) is dropped and redone whole; lines of tasks
    # outside the set (an earlier run with more --max-tasks) are kept as they are.
    kept = [r for r in records if r.get("task_id") in done or r.get("task_id") not in expected]
    torn = pred_path.exists() and pred_path.stat().st_size > 0 and not pred_path.read_bytes().endswith(b"\n")
    if len(kept) != len(records) or torn:
        rewrite_lines(pred_path, kept)
    records = kept
    summary = InferSummary(tasks=len(s.tasks), skipped_tasks=len(done),
                           edits=describe([e.record for e in s.edits]) if s.edits else "")
    pending = [t for t in s.tasks if t.task_id not in done]
    if pending:
        records += _generate_tasks(s, pending, expected, summary, progress)
    atomic_write_json(s.out / SUBMISSION, build_submission(s.tasks, records))
    return summary


def window_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """The batches of one window, as ``generate()`` forms them from the window's prompts: longest
    first (a stable sort), cut every ``batch_size``. Each is given to ``generate()`` on its own
    (already sorted, so it stays one batch in this order): the same computation, row for row, as
    one ``generate()`` over the whole window, on whichever device runs it."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@dataclass
class _Window:
    tasks: list
    samples: list
    batches: list  # [np.ndarray of indices into samples]
    results: dict = field(default_factory=dict)  # batch -> [(sample index, Generation)]
    new_tokens: int = 0


def _generate_tasks(s: InferSettings, pending, expected, summary: InferSummary, progress: bool) -> list[dict]:
    import jax
    import jax.numpy as jnp

    from arclens.model.edits import PromptRoles
    from arclens.model.generate import GenerateStats, StopRule, generate, tokenizer_fence_tables
    from arclens.model.loading import load_params
    from arclens.prompts import create_grid_encoder, load_tokenizer, render_samples

    tokenizer = load_tokenizer(str(s.model_path))
    encoder = create_grid_encoder(s.prompt.encoder)
    params = load_params(s.model_path, s.config, {"bfloat16": jnp.bfloat16, "float32": jnp.float32}[s.dtype])
    stop = StopRule(eos_ids=eos_ids(s.model_path, tokenizer, s.config.vocab_size))
    if "```" in encoder.to_text(((0,),)):  # the answer is a code block: stop at its closing fence
        fc, fs = tokenizer_fence_tables(tokenizer, s.config.vocab_size)
        stop = StopRule(eos_ids=stop.eos_ids, fence_count=fc, fence_state=fs)
    pad_id = int(tokenizer.pad_token_id or 0)

    # The one place interventions enter the run: the edits (their params, e.g. an SAE's arrays)
    # are replicated with the weights, so each device's generate() reads only its own copies.
    edits = {e.hook: e.edit for e in s.edits} or None
    edit_records = [e.record for e in s.edits]

    def run(replica, prompts, needed, roles):
        replica_params, replica_edits = replica
        intervene = {} if replica_edits is None else {"edits": replica_edits, "roles": roles}
        stats = GenerateStats()
        gens = list(generate(
            replica_params, s.config, prompts, max_new_tokens=s.max_new_tokens, batch_size=s.batch_size, stop=stop,
            fences_needed=needed, hooks=s.hooks, chunk=s.chunk, pad_id=pad_id, stats=stats, **intervene,
        ))
        return gens, stats

    devices = jax.local_devices()[: s.devices]
    summary.device_kind = devices[0].device_kind
    summary.device_batches = [0] * len(devices)
    if progress:
        print(f"generating on {len(devices)} device(s) ({devices[0].device_kind}), one model replica each"
              + (f"; edits: {summary.edits}" if summary.edits else ""), file=sys.stderr)
    store = GeneratedActivations(s, tokenizer, encoder) if s.hooks else None
    new_records: list[dict] = []
    windows = _windows(pending, expected, s.batch_size * WINDOW_BATCHES)
    # Batches in flight (queued or running) kept at about two per device, whole windows at a time;
    # finished windows are written strictly in order, so later ones wait in memory until then.
    max_in_flight = 2 * len(devices)
    # ... and at most this many windows past the oldest unwritten one: one slow batch holds back
    # the writing of every later window, whose generations (and --hooks captures) wait in memory.
    max_windows_ahead = 2 * len(devices) + 1
    state: dict[int, _Window] = {}
    fed = written = in_flight = 0
    t_start = t_last = time.perf_counter()

    def feed(w: int) -> int:
        samples = list(render_samples(windows[w], tokenizer, s.prompt))
        # A prompt inside an open code block (arc24's inference prompts end in ```grid) needs one
        # more fence to close it; otherwise the answer opens and closes its own.
        needed = np.array([1 if smp.text.count("```") % 2 else 2 for smp in samples], np.int32)
        batches = window_batches([len(smp.token_ids) for smp in samples], s.batch_size)
        state[w] = _Window(tasks=windows[w], samples=samples, batches=batches)
        for b, idx in enumerate(batches):
            # Token roles for the edits' filters, as generate() documents them: the prompt's own,
            # and every generated token part of the answer and no known cell.
            roles = [PromptRoles.from_sample(samples[i]) for i in idx] if edits else None
            pool.submit(w, b, [samples[i].token_ids for i in idx], needed[idx], roles)
        return len(batches)

    def write(w: int, win: _Window) -> None:
        nonlocal t_last
        window_records = []
        for b, idx in enumerate(win.batches):  # the order one generate() over the window yields in
            for j, gen in win.results[b]:
                sample = win.samples[idx[j]]
                rec = prediction_record(sample, gen, tokenizer, encoder, edit_records)
                window_records.append(rec)
                if store is not None:
                    store.add(sample, gen)
                summary.samples += 1
                summary.parsed += rec["grid"] is not None
                summary.stop_reasons[gen.stop_reason] = summary.stop_reasons.get(gen.stop_reason, 0) + 1
        summary.new_tokens += win.new_tokens
        if store is not None:
            store.flush()  # activations are committed before the predictions that mark a task done
        window_records.sort(key=lambda r: (r["task_id"], r["test_index"], int(r["key"].rsplit("/", 1)[1])))
        append_lines(s.out / PREDICTIONS, window_records)
        new_records.extend(window_records)
        now = time.perf_counter()
        if progress:
            print(
                f"window {w + 1}/{len(windows)}: {len(win.tasks)} tasks, {len(win.samples)} samples, "
                f"{win.new_tokens} new tokens in {now - t_last:.1f} s",
                file=sys.stderr,
            )
        t_last = now

    pool = DeviceReplicas((params, edits), devices, run)
    try:
        while True:
            while fed < len(windows) and (fed == written or (in_flight < max_in_flight
                                                              and fed - written < max_windows_ahead)):
                in_flight += feed(fed)
                fed += 1
            while written in state and len(state[written].results) == len(state[written].batches):
                write(written, state.pop(written))
                written += 1
            if written == len(windows):
                break
            try:
                k, (w, b), gens, stats = pool.result()
            except Exception as err:  # re-raised, as DeviceOutOfMemory if it is one
                from arclens.errors import device_out_of_memory

                raise device_out_of_memory(
                    err, f"a generation batch of {s.batch_size} prompts",
                    f"lower --batch-size (this run: {s.batch_size}) or --max-new-tokens "
                    f"(this run: {s.max_new_tokens})") from err
            in_flight -= 1
            state[w].results[b] = gens
            state[w].new_tokens += stats.new_tokens
            summary.device_batches[k] += 1
    finally:
        pool.close()
        summary.generate_s += time.perf_counter() - t_start
    if store is not None:
        store.close()
    return new_records
