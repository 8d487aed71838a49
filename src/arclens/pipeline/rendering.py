"""Prompts for extraction: which samples are still to do, and rendering them ahead of the device.

Rendering (arc24 prompt text + tokenization + token roles) runs at 0.15-0.7M tokens/s in one
process, about what one GPU consumes, so on a machine with cores to spare it runs in a pool of worker
processes (spawned, never forked: the parent has JAX and its threads). Small jobs render in-process
because starting workers (each imports transformers) costs seconds.

Work is cut into **windows** of whole tasks (about ``window_samples`` samples each). A window is
the unit of scheduling: its samples are sorted by length into batches (batching.py). The producer
keeps the next window rendering in the pool while the device works through the current one.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from arclens.data.tasks import Task
from arclens.prompts import PromptConfig, Sample, plan_augmentations, render_samples, sample_key

WORKERS_ENV = "ARCLENS_RENDER_WORKERS"
DEFAULT_WINDOW_SAMPLES = 16384
TASKS_PER_CHUNK = 8  # tasks per pool job: small enough to spread a window over every worker
MIN_SAMPLES_FOR_POOL = 2048


def task_keys(task: Task, config: PromptConfig) -> list[str]:
    """Every sample key of a task, without rendering anything."""
    n_aug = len(plan_augmentations(task.task_id, len(task.train), config.predictions_per_task, config.seed, config.augment))
    return [sample_key(task.task_id, t, a) for t in range(len(task.test)) for a in range(n_aug)]


@dataclass(frozen=True)
class PendingWork:
    tasks: tuple[Task, ...]  # tasks with at least one sample not yet committed
    todo_keys: frozenset[str]
    total_keys: int
    skipped: int  # keys already committed

    @property
    def n_samples(self) -> int:
        return len(self.todo_keys)


def pending_work(tasks: Sequence[Task], config: PromptConfig, committed: set[str]) -> PendingWork:
    todo_tasks, todo, total = [], set(), 0
    for task in tasks:
        keys = task_keys(task, config)
        total += len(keys)
        missing = [k for k in keys if k not in committed]
        if missing:
            todo_tasks.append(task)
            todo.update(missing)
    return PendingWork(tuple(todo_tasks), frozenset(todo), total, total - len(todo))


def windows(tasks: Sequence[Task], config: PromptConfig, window_samples: int = DEFAULT_WINDOW_SAMPLES) -> list[tuple[Task, ...]]:
    """Consecutive runs of whole tasks of about ``window_samples`` samples (at least one task)."""
    out, current, size = [], [], 0
    for task in tasks:
        n = len(task_keys(task, config))
        if current and size + n > window_samples:
            out.append(tuple(current))
            current, size = [], 0
        current.append(task)
        size += n
    if current:
        out.append(tuple(current))
    return out


def default_workers(n_samples: int) -> int:
    env = os.environ.get(WORKERS_ENV)
    if env not in (None, ""):
        return max(0, int(env))
    cpus = os.cpu_count() or 1
    if n_samples < MIN_SAMPLES_FOR_POOL or cpus < 4:
        return 0
    return min(cpus - 2, 16)  # leave cores for the device loop, the copy and the writer threads


# -- the pool side ---------------------------------------------------------------------------

_worker_state: dict = {}


def _init_worker(model_dir: str, config: PromptConfig) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the pool is the parallelism
    from arclens.prompts import load_tokenizer

    _worker_state["tokenizer"] = load_tokenizer(model_dir)
    _worker_state["config"] = config


def _render_chunk(tasks: Sequence[Task]) -> list[Sample]:
    samples = list(render_samples(tasks, _worker_state["tokenizer"], _worker_state["config"]))
    for s in samples:
        s.text = ""  # extract never needs the text; it would double what crosses the pipe
    return samples


class Renderer:
    """Renders windows of tasks, in a process pool (``workers > 0``) or in the calling thread.

    ``submit`` starts a window and returns a handle; ``collect`` blocks for its samples, filtered
    to the keys still to do, in render order.
    """

    def __init__(self, model_dir: str, tokenizer, config: PromptConfig, todo_keys: frozenset[str], workers: int = 0):
        self.config = config
        self.todo = todo_keys
        self.tokenizer = tokenizer
        self.workers = workers
        self._pool = None
        if workers > 0:
            ctx = multiprocessing.get_context("spawn")
            self._pool = ctx.Pool(workers, initializer=_init_worker, initargs=(str(model_dir), config))

    def submit(self, window: Sequence[Task]):
        if self._pool is None:
            return list(window)  # rendered lazily in collect(), in the caller's thread
        chunks = [tuple(window[i : i + TASKS_PER_CHUNK]) for i in range(0, len(window), TASKS_PER_CHUNK)]
        return [self._pool.apply_async(_render_chunk, (c,)) for c in chunks]

    def collect(self, handle) -> list[Sample]:
        if self._pool is None:
            rendered: Iterator[Sample] = render_samples(handle, self.tokenizer, self.config)
        else:
            rendered = (s for job in handle for s in job.get())
        return [s for s in rendered if s.key in self.todo]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None
