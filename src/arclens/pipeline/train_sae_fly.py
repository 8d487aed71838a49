"""`arclens train-sae --model MODEL --tasks SRC`: training on the fly (SPEC.md 5, docs/SAE.md "On the fly").

The extract job (pipeline/job.py) computes the captures; ``sae.shuffle.DeviceShuffle`` packs the
valid tokens of a window of forward batches, permutes them on the device and cuts the training
batches. The activations never leave the device: the host sees token ids going in and one count
per window coming back.

Epoch ``e`` is one pass over every sample of the tasks, its forward batches in the order
``epoch_order_seed(seed, e)`` draws (shuffled runs) or in schedule order (``--no-shuffle``, the
order ``arclens extract`` writes a store in). Every real token is trained on (the store
equivalent is ``extract --positions all``). The stream is a pure function of the settings, so a
resumed run recomputes only its window's forward batches and ends with the same weights.

``FlySource`` has the trainer's source interface (as ``sae.store_source.StoreSource``):
``device_batches(position, sharding)``, ``position_to_checkpoint``, ``position_from_checkpoint``,
``fingerprint``, ``describe``, ``n_tokens``.
"""

from __future__ import annotations

import argparse
import os

from arclens.errors import UserError
from arclens.sae.shuffle import DEFAULT_WINDOW_BATCHES, DeviceShuffle, epoch_order_seed

FLY_ONLY_FLAGS = (("--tasks", "tasks"), ("--solutions", "solutions"), ("--max-tasks", "max_tasks"),
                  ("--tokens-per-batch", "tokens_per_batch"), ("--model-dtype", "model_dtype"),
                  ("--shuffle-window", "shuffle_window"))


def check_fly_flags(args) -> None:
    """``--store`` XOR ``--model`` + ``--tasks``; the on-the-fly flags only with ``--model``."""
    if args.store is not None and args.model is not None:
        raise UserError("train-sae: give --store DEST or --model MODEL --tasks SRC (on the fly), not both")
    if args.store is None and args.model is None:
        raise UserError("train-sae: give --store DEST, or --model MODEL --tasks SRC to train on the fly")
    if args.model is not None and not args.tasks:
        raise UserError(f"train-sae --model {args.model}: name the tasks to run it on with --tasks SRC")
    if args.store is not None:
        given = [flag for flag, name in FLY_ONLY_FLAGS if getattr(args, name, None) is not None]
        given += prompt_config(args).flags_changed(seed_flag="--prompt-seed")
        if given:
            raise UserError(f"train-sae: {given[0]} is for training on the fly (--model); --store {args.store} "
                            "already holds its activations")
    if args.shuffle_window is not None and args.shuffle_window < 1:
        raise UserError(f"--shuffle-window {args.shuffle_window}: expected at least 1 forward batch")


def prompt_config(args):
    """The prompt options, with ``--prompt-seed`` for extract's ``--seed`` (train-sae's own
    ``--seed`` is the initialisation and data order)."""
    from arclens.prompts import PromptConfig

    return PromptConfig.from_args(argparse.Namespace(**{**vars(args), "seed": args.prompt_seed}))


def model_hooks(args, config) -> list[str]:
    """The hooks the SAEs read, checked against the model's layers (one line naming the hook)."""
    from arclens.model.hooks import HOOK_KINDS, parse_hook

    names = list(dict.fromkeys(args.hooks or [args.hook_in, args.hook_out]))
    for name in names:
        hook = parse_hook(name)
        if not 0 <= hook.layer < config.n_layers:
            raise UserError(f"--model {args.model}: no hook {name}; it has blocks.0..{config.n_layers - 1}."
                            f"hook_KIND, KIND one of {', '.join(HOOK_KINDS)}")
    return names


def capture_settings(args, hooks: list[str]):
    """``(CaptureSettings, tasks)`` as ``arclens extract`` builds them, with ``--positions all``,
    ``--model-dtype`` for extract's ``--dtype`` and ``--prompt-seed`` for its ``--seed``."""
    from arclens.data.loaders import load_tasks
    from arclens.pipeline.extract import check_tasks_for_prompts
    from arclens.pipeline.settings import CaptureSettings

    prompt = prompt_config(args)
    capture = CaptureSettings.load(args.model, hooks, prompt=prompt, positions="all",
                                   dtype=args.model_dtype or "bfloat16", mesh=args.mesh,
                                   tokens_per_batch=args.tokens_per_batch)
    tasks = load_tasks(args.tasks, args.solutions, args.max_tasks)
    if not tasks:
        raise UserError(f"--tasks {args.tasks}: no tasks to train on")
    check_tasks_for_prompts(tasks, prompt)
    return capture, tasks


def epoch_tokens(job, tasks) -> int:
    """The real tokens of one pass: the rendered prompts' lengths (no forward pass)."""
    from arclens.pipeline.rendering import Renderer, default_workers
    from arclens.pipeline.schedule import task_keys, windows

    c = job.capture
    n = sum(len(task_keys(t, c.prompt)) for t in tasks)
    renderer = Renderer(c.model_path, job.tokenizer, c.prompt, default_workers(n, c.render_workers))
    try:
        return sum(len(s.token_ids) for w in windows(list(tasks), c.prompt, c.window_samples)
                   for s in renderer.collect(renderer.submit(w)))
    finally:
        renderer.close()


class FlySource:
    """Training batches straight from the model's forward passes (see the module doc)."""

    def __init__(self, job, tasks, hooks, *, tasks_source: str, batch_tokens: int, seed: int,
                 dtype: str = "float32", shuffle: bool = True, window_batches: int = DEFAULT_WINDOW_BATCHES,
                 n_tokens: int | None = None):
        from arclens.pipeline.schedule import task_keys
        from arclens.store.metadata import tasks_section

        self.job, self.tasks, self.hooks = job, list(tasks), list(hooks)
        missing = [h for h in self.hooks if h not in {x.name for x in job.capture.hooks}]
        if missing:
            raise ValueError(f"the job does not capture {', '.join(missing)}")
        self.batch_tokens, self.seed, self.shuffle = batch_tokens, seed, shuffle
        self.window_batches = window_batches
        c = job.capture
        # Fed in the narrower of the capture and training dtypes: bf16 captures stay bf16 in the
        # buffer (the step's upcast is exact) and the buffer is half the size.
        self.feed_dtype = "bfloat16" if "bfloat16" in (c.dtype, dtype) else "float32"
        self.tasks_source = tasks_source
        self._tasks = tasks_section(tasks_source, self.tasks, c.prompt.with_answer)
        self.n_samples = sum(len(task_keys(t, c.prompt)) for t in self.tasks)
        self._n_tokens = n_tokens
        self._open: list = []  # the forward streams and shuffle streams in use, closed by close()

    @property
    def n_tokens(self) -> int:
        if self._n_tokens is None:
            self._n_tokens = epoch_tokens(self.job, self.tasks)
        return self._n_tokens

    def fingerprint(self) -> dict:
        """What identifies the token stream, whatever the model and tasks are named: the model's
        weights, the capture dtype and hooks, the prompts, the tasks' content, and everything
        that shapes the forward batches (their schedule fixes the order and, in bf16, the bits)."""
        c, planner = self.job.capture, self.job.planner
        return {"kind": "model", "model_fingerprint": c.model_fingerprint, "capture_dtype": c.dtype,
                "hooks": [h.name for h in c.hooks], "positions": c.positions, "prompt": c.prompt.to_json(),
                "tasks": {"count": self._tasks["count"], "fingerprint": self._tasks["fingerprint"]},
                "forward_batches": {"tokens_per_batch": planner.tokens_per_batch, "max_shapes": planner.max_shapes,
                                    "row_multiple": planner.row_multiple, "window_samples": c.window_samples},
                "shuffle_window": self.window_batches,
                # Over several data devices the shuffle deals each window out (sae/shuffle.py): a
                # checkpoint from before the deal is another stream. One device's stream never changed.
                **({"shuffle_dealt": True} if planner.row_multiple > 1 else {})}

    def describe(self) -> dict:
        """The fingerprint plus how the model and tasks were named (arclens.json's ``source``)."""
        c = self.job.capture
        return {**self.fingerprint(), "model": {"name": c.model, "path": os.path.abspath(c.model_path)},
                "tasks": {**self._tasks}, "samples": self.n_samples, "n_tokens": self._n_tokens}

    # -- the trainer's interface ------------------------------------------------------------

    def _forward(self, epoch: int, start: int):
        order_seed = epoch_order_seed(self.seed, epoch) if self.shuffle else None
        stream = self.job.device_batches(self.tasks, order_seed=order_seed, start=start, own_stop=False)
        self._open.append(stream)
        try:
            for b in stream:
                yield {h: b.captures[h] for h in self.hooks}, b.valid
        finally:
            stream.close()
            self._open.remove(stream)

    def _shuffler(self, sharding) -> DeviceShuffle:
        return DeviceShuffle(self.hooks, batch_tokens=self.batch_tokens, seed=self.seed,
                             window_batches=self.window_batches, shuffle=self.shuffle, dtype=self.feed_dtype,
                             batch_sharding=sharding)

    def device_batches(self, position, sharding):
        """``(batch {hook: [batch_tokens, d] on the device}, position after it)`` forever."""
        stream = self._shuffler(sharding).batches(self._forward, position)
        self._open.append(stream)
        try:
            yield from stream
        finally:
            stream.close()
            if stream in self._open:
                self._open.remove(stream)

    def position_to_checkpoint(self, position):
        from arclens.sae.shuffle import position_to_checkpoint

        return position_to_checkpoint(position)

    def position_from_checkpoint(self, doc: dict, arrays: dict):
        from arclens.sae.shuffle import position_from_checkpoint

        return position_from_checkpoint(self.hooks, doc, arrays)

    def close(self) -> None:
        """Stop the forward passes still in flight (the trainer leaves its stream suspended)."""
        for stream in reversed(list(self._open)):
            stream.close()
        self._open.clear()


def open_source(args, runtime, settings_for):
    """Check the model, hooks, prompts and tasks, load the model and build the source;
    ``settings_for(n_tokens, width_of, fingerprint)`` makes the TrainSettings. Returns
    ``(settings, source)`` (the job is ``source.job``; ``source.close()`` then ``job.close()``).
    Nothing is written here."""
    from arclens.model.config import QwenConfig
    from arclens.model.loading import resolve_model
    from arclens.pipeline.job import ExtractJob

    config = QwenConfig.from_pretrained(resolve_model(args.model))
    hooks = model_hooks(args, config)
    capture, tasks = capture_settings(args, hooks)

    def width_of(hook: str) -> int:
        return int(config.d_model)  # every capture point of a Qwen2 block is d_model wide

    job = ExtractJob(capture, runtime)  # loads the tokenizer and weights: a broken checkpoint fails here
    try:
        source = FlySource(job, tasks, hooks, tasks_source=args.tasks, batch_tokens=args.batch_tokens,
                           seed=args.seed, dtype=args.dtype, shuffle=not args.no_shuffle,
                           window_batches=args.shuffle_window or DEFAULT_WINDOW_BATCHES)
        # One pass is counted by rendering the prompts (no forward pass), only when --tokens is not given.
        settings = settings_for(source.n_tokens if args.tokens is None else 0, width_of, source.fingerprint())
    except BaseException:
        job.close()
        raise
    return settings, source
