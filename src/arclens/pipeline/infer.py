"""`arclens infer`: greedy generation -> parse -> revert -> vote -> submission.json.

Files in ``--out DIR`` (docs/INFERENCE.md):

- ``infer.json``: the settings of the run (model, dtype, prompt options, max_new_tokens, hooks).
  A re-run into the same DIR with other settings is refused; with the same ones it resumes.
- ``predictions.jsonl``: one line per sample (SPEC.md section 2), appended a window of whole
  tasks at a time and fsynced, so the file only ever grows by complete tasks. On resume a task
  whose every sample key is in the file is skipped; lines of an incomplete task (a torn write)
  are dropped by rewriting the file, and a torn last line is ignored.
- ``submission.json``: Kaggle ARC Prize format, rewritten atomically (temp file + os.replace) at
  the end from every line of predictions.jsonl, for every task of ``--tasks``.
- ``activations/`` (with ``--hooks``): an activation store (SPEC.md section 3) of the hooks at
  every generated token; committed before the window's predictions are appended, and resumed by
  its committed keys.

Devices: data parallelism over the local devices of this one process (``--devices N``, default
all): one parameter replica and one worker thread per device, pulling batches from a shared
queue. Batches are formed per window exactly as one ``generate()`` call over the window forms
them, so every batch is the same computation whatever the number of devices, and the main thread
writes whole windows in order: the files are identical for any ``--devices``.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from arclens.data.tasks import Grid, Task, as_grid, grid_to_json
from arclens.errors import UserError

PREDICTIONS = "predictions.jsonl"
SUBMISSION = "submission.json"
SETTINGS = "infer.json"
FINGERPRINT_KEY = "model_fingerprint"
ACTIVATIONS = "activations"
DEFAULT_BATCH_SIZE = {"cpu": 8}  # rows per batch by JAX backend; 64 on accelerators
WINDOW_BATCHES = 4  # a window (the unit of writing and of resume) holds about this many batches
# A missing attempt is `[]` (issue 8: "[]-padded"). It is valid JSON for every ARC Prize scorer and
# matches no answer, so a test input the model never answered can never score by accident (a
# [[0]] pad would "solve" every 1x1 all-black output).
EMPTY_ATTEMPT: Grid = ()
MAX_SIDE = 30


# ---------------------------------------------------------------------------------------------
# Voting and the submission (pure functions over prediction records; no model needed)


def _record_grid(value) -> Grid | None:
    return None if value is None else as_grid(value)


def task_attempts(task: Task, records: Iterable[dict]) -> list[dict]:
    """One ``{"attempt_1": G, "attempt_2": G}`` per test input of ``task``, in order, voted from
    the prediction records of that task (their ``reverted_grid`` and ``logprobs``)."""
    from arclens.prompts import Prediction, vote

    by_test: dict[int, list] = {i: [] for i in range(len(task.test))}
    for r in records:
        if r["test_index"] in by_test:
            by_test[r["test_index"]].append(Prediction(grid=_record_grid(r["reverted_grid"]), logprobs=r["logprobs"]))
    out = []
    for i in range(len(task.test)):
        grids = list(vote(by_test[i], n_attempts=2))
        grids += [EMPTY_ATTEMPT] * (2 - len(grids))
        out.append({"attempt_1": grid_to_json(grids[0]), "attempt_2": grid_to_json(grids[1])})
    return out


def build_submission(tasks: Sequence[Task], records: Iterable[dict]) -> dict[str, list[dict]]:
    by_task: dict[str, list[dict]] = {}
    for r in records:
        by_task.setdefault(r["task_id"], []).append(r)
    return {t.task_id: task_attempts(t, by_task.get(t.task_id, [])) for t in tasks}


def atomic_write_json(path: Path, obj) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------
# predictions.jsonl and resume


def read_predictions(path: Path) -> list[dict]:
    """Every complete line; a torn last line (a crash mid-write) is ignored."""
    if not path.exists():
        return []
    records = []
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # only the last line may be torn
                break
            raise UserError(f"{path}: line {i + 1} is not JSON; this is not a predictions file of arclens infer")
    return records


def completed_tasks(records: Sequence[dict], expected: dict[str, set[str]]) -> set[str]:
    """Tasks every one of whose expected sample keys has a record."""
    have: dict[str, set[str]] = {}
    for r in records:
        have.setdefault(r["task_id"], set()).add(r["key"])
    return {t for t, keys in expected.items() if keys and keys <= have.get(t, set())}


def append_lines(path: Path, records: Sequence[dict]) -> None:
    data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
    with open(path, "a") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _rewrite_lines(path: Path, records: Sequence[dict]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        for r in records:
            f.write(json.dumps(r, separators=(",", ":")) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _same_scheme(a, b) -> bool:
    """Two fingerprints that can be compared: both present, made by the same scheme (``scheme:hex``).
    Otherwise the run folder predates this scheme, and the model is compared by name."""
    return isinstance(a, str) and isinstance(b, str) and a.partition(":")[0] == b.partition(":")[0]


def check_settings(out: Path, settings: dict) -> None:
    """Create ``infer.json``, or refuse a resume whose settings differ."""
    path = out / SETTINGS
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{path}: unreadable ({e}); remove it or use another --out") from None
        diffs = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if _same_scheme(old.get(FINGERPRINT_KEY), settings.get(FINGERPRINT_KEY)):
            # Both runs fingerprinted their model: that, not the spelling of --model, says whether
            # it is the same one (model/fingerprint.py).
            diffs = [k for k in diffs if k != "model"]
        else:  # a run directory from before fingerprints: compare by name, as it did
            diffs = [k for k in diffs if k != FINGERPRINT_KEY]
        if diffs:
            details = "; ".join(f"{k}: {old.get(k)!r} there, {settings.get(k)!r} now" for k in diffs[:4])
            raise UserError(f"--out {out} holds a run with other settings ({details}); use another --out")
        return
    atomic_write_json(path, settings)


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
    loop: str = "while"
    chunk: int = 32
    model_fingerprint: str | None = None
    devices: int = 1  # the first N of jax.local_devices(); not a setting of the run (outputs do not depend on it)

    def to_json(self) -> dict:
        return {
            "model": self.model,
            FINGERPRINT_KEY: self.model_fingerprint,
            "model_config": self.config.to_json(),
            "dtype": self.dtype,
            "prompt": self.prompt.to_json(),
            "max_new_tokens": self.max_new_tokens,
            "hooks": [h.name for h in self.hooks],
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
        ]


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
        devices=devices,
    )


def main(args) -> int:
    t0 = time.perf_counter()
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


def infer(s: InferSettings, *, progress: bool = True) -> InferSummary:
    from arclens.pipeline.schedule import task_keys

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
        _rewrite_lines(pred_path, kept)
    records = kept
    summary = InferSummary(tasks=len(s.tasks), skipped_tasks=len(done))
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


class _Replicas:
    """One worker thread per device, each with its own parameter replica, pulling ``(window,
    batch, prompts, fences_needed)`` jobs from a shared queue and putting ``(device index, job,
    generations, stats)`` on the results queue (or the exception that stopped it).

    A worker runs ``generate()`` under ``jax.default_device(its device)``: the numpy inputs and the
    small arrays generate() makes (EOS ids, fence tables, tokens, lengths, compaction indices) are
    created there, next to the replica, so every jitted call (``_start``, ``_decode_chunk``,
    ``_decode_one``, ``_gather_rows``) runs on that device with nothing to move. Implicit transfers
    between devices are disallowed there (``jax.transfer_guard_device_to_device``): a stray array
    on another device is a placement bug and fails loudly instead of copying at every step. XLA
    releases the GIL while it runs, so the devices work at once."""

    def __init__(self, params, devices, run):
        self.devices = list(devices)
        self.jobs: queue.Queue = queue.Queue()
        self.results: queue.Queue = queue.Queue()
        self._run = run
        self._threads = [
            threading.Thread(target=self._work, args=(k, d, params), name=f"arclens-infer-{d}", daemon=True)
            for k, d in enumerate(self.devices)
        ]
        for t in self._threads:
            t.start()

    def _work(self, k, device, params) -> None:
        import jax

        try:
            replica = jax.device_put(params, device)  # a no-op on the device the weights were loaded to
            while (job := self.jobs.get()) is not None:
                with jax.default_device(device), jax.transfer_guard_device_to_device("disallow"):
                    out = self._run(replica, *job[2:])
                self.results.put((k, job, *out))
        except BaseException as e:  # noqa: BLE001 - handed to the main thread, which raises it
            self.results.put((k, None, e, None))

    def submit(self, window: int, batch: int, prompts, needed) -> None:
        self.jobs.put((window, batch, prompts, needed))

    def result(self):
        """The next finished job: ``(device index, (window, batch), generations, stats)``."""
        while True:
            try:  # a timeout keeps the wait interruptible (Ctrl-C) everywhere
                k, job, out, stats = self.results.get(timeout=0.5)
            except queue.Empty:
                continue
            if job is None:
                raise out
            return k, job[:2], out, stats

    def close(self) -> None:
        """Drop the jobs not started, and wait for the running ones (a batch each) to end."""
        try:
            while True:
                self.jobs.get_nowait()
        except queue.Empty:
            pass
        for _ in self._threads:
            self.jobs.put(None)
        busy = [t for t in self._threads if t.is_alive()]
        if busy and sys.exc_info()[0] is not None:  # stopping on an error or Ctrl-C: say why we wait
            print(f"arclens infer: stopping; waiting for the batches running on {len(busy)} device(s) to end",
                  file=sys.stderr, flush=True)
        for t in self._threads:
            t.join()


def _generate_tasks(s: InferSettings, pending, expected, summary: InferSummary, progress: bool) -> list[dict]:
    import jax
    import jax.numpy as jnp

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

    def run(replica, prompts, needed):
        stats = GenerateStats()
        gens = list(generate(
            replica, s.config, prompts, max_new_tokens=s.max_new_tokens, batch_size=s.batch_size, stop=stop,
            fences_needed=needed, hooks=s.hooks, chunk=s.chunk, loop=s.loop, pad_id=pad_id, stats=stats,
        ))
        return gens, stats

    devices = jax.local_devices()[: s.devices]
    summary.device_kind = devices[0].device_kind
    summary.device_batches = [0] * len(devices)
    if progress:
        print(f"generating on {len(devices)} device(s) ({devices[0].device_kind}), one model replica each",
              file=sys.stderr)
    store = _ActivationSink(s, tokenizer, encoder) if s.hooks else None
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
            pool.submit(w, b, [samples[i].token_ids for i in idx], needed[idx])
        return len(batches)

    def write(w: int, win: _Window) -> None:
        nonlocal t_last
        window_records = []
        for b, idx in enumerate(win.batches):  # the order one generate() over the window yields in
            for j, gen in win.results[b]:
                sample = win.samples[idx[j]]
                rec = _record(sample, gen, tokenizer, encoder)
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

    pool = _Replicas(params, devices, run)
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


def _record(sample, gen, tokenizer, encoder) -> dict:
    from arclens.prompts import parse_grid, validate_grid

    text = tokenizer.decode(gen.token_ids.tolist(), skip_special_tokens=True)
    grid = parse_grid(text, encoder)
    reverted = None
    if grid is not None:
        try:
            reverted = validate_grid(sample.augmentation.revert(grid))
        except ValueError:
            reverted = None
    return {
        "key": sample.key,
        "task_id": sample.task_id,
        "test_index": sample.test_index,
        "augmentation": sample.augmentation.to_json(),
        "prompt_token_ids": sample.token_ids.tolist(),
        "output_token_ids": gen.token_ids.tolist(),
        "output_text": text,
        "logprobs": [float(x) for x in gen.logprobs],
        "stop_reason": gen.stop_reason,
        "grid": grid_to_json(grid),
        "reverted_grid": grid_to_json(reverted),
    }


class _ActivationSink:
    """``--hooks``: the hooks at every generated token into ``DIR/activations`` (SPEC section 3).

    Token k of a sample's output was produced at position ``prompt_len - 1 + k``; that row holds
    the activations there and, as every row of an extract store, the token at that position: the
    token fed there (``token_id``: the last prompt token, then output token k - 1) and its grid
    role. Row 0 has the prompt's last token's role (from the prompt, as extract stores it); row
    k >= 1 has output token k - 1's role in the answer (``prompts.output_token_roles``: the
    decoded output read by the encoder as ``parse_grid`` reads it, cells numbered as the answer
    grid of a training prompt, ragged or cut-short answers included, -1 for anything that is not
    one cell). So the row whose ``token_id`` is cell (r, c) holds the state while the model reads
    that cell and writes the token after it; the state that wrote the cell is the row before."""

    def __init__(self, s: InferSettings, tokenizer, encoder):
        from arclens.prompts.templates import get_prompt_version
        from arclens.store.writer import StoreWriter, committed_keys, open_or_create_store

        self.dest = str(s.out / ACTIVATIONS)
        self.tokenizer, self.encoder = tokenizer, encoder
        self.version = get_prompt_version(s.prompt.version)
        from arclens.model.loading import is_random_checkpoint
        from arclens.store.format import writer_name
        from arclens.store.metadata import model_section, tasks_section

        meta = {
            "model": model_section(s.model, s.config.to_json(), s.dtype, fingerprint=s.model_fingerprint,
                                   random_weights=is_random_checkpoint(s.model_path)),
            "hooks": [h.name for h in s.hooks],
            "dtype": s.dtype,
            "d_model": s.config.hidden_size,
            "positions": "generated",
            "prompt": s.prompt.to_json(),
            "tasks": tasks_section(s.tasks_source, s.tasks, s.prompt.with_answer),
            "generation": {"max_new_tokens": s.max_new_tokens, "decoding": "greedy"},
        }
        open_or_create_store(self.dest, meta)
        self.committed = committed_keys(self.dest)
        self.writer = StoreWriter(self.dest, writer=writer_name(role="infer"))

    def roles(self, sample, gen) -> dict[str, np.ndarray]:
        """``grid``/``row``/``col`` int16 of each stored row: the role of the token fed there."""
        from arclens.prompts import output_token_roles
        from arclens.prompts.chat import answer_grid_number

        n_prompt = len(sample.token_ids)
        number = answer_grid_number(self.version, len(sample.augmentation.train_order))
        generated = output_token_roles(self.tokenizer, gen.token_ids, self.encoder, number)
        return {
            col: np.concatenate([getattr(sample, col)[n_prompt - 1 :], out[:-1]]).astype(np.int16)
            for col, out in zip(("grid", "row", "col"), generated)
        }

    def add(self, sample, gen) -> None:
        if sample.key in self.committed:
            return  # committed by an earlier run that stopped before writing its predictions
        n_prompt = len(sample.token_ids)
        fed = np.concatenate([sample.token_ids[-1:], gen.token_ids[:-1]]).astype(np.int32)
        arrays = {**gen.captures, "position": gen.positions, "token_id": fed, **self.roles(sample, gen)}
        meta = {
            "key": sample.key,
            "task_id": sample.task_id,
            "test_index": sample.test_index,
            "augmentation": sample.augmentation.to_json(),
            "prompt_tokens": n_prompt,
        }
        self.writer.add(meta, arrays)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
