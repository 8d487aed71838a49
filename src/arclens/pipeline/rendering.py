"""Rendering the prompts of extraction ahead of the device.

Rendering (arc24 prompt text + tokenization + token roles) runs at 0.15-0.7M tokens/s in one
process, about what one GPU consumes, so on a machine with cores to spare it runs in a pool of worker
processes (spawned, never forked: the parent has JAX and its threads). Small jobs render in-process
because starting workers (each imports transformers) costs seconds.

Work is cut into **windows** of whole tasks (schedule.py); the renderer renders a window whole,
every sample of it, because the window's batch schedule is a function of all of them. The
producer keeps the next window rendering in the pool while the device works through the current
one.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator, Sequence

from arclens.cores import usable_cores
from arclens.data.tasks import Task
from arclens.prompts import PromptConfig, Sample, render_samples

TASKS_PER_CHUNK = 8  # tasks per pool job: small enough to spread a window over every worker
MIN_SAMPLES_FOR_POOL = 2048


def default_workers(n_samples: int, requested: int | None = None) -> int:
    """Rendering processes for a job of ``n_samples``: ``requested`` (``--render-workers``), else
    none for a small job or a machine with fewer than 4 cores, else cores - 2 (at most 16). The
    cores are those this process may use (`arclens.cores.usable_cores`: a container's quota)."""
    if requested is not None:
        return requested
    cpus = usable_cores()
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

    ``submit`` starts a window and returns a handle; ``collect`` blocks for all of its samples,
    in render order.
    """

    def __init__(self, model_dir: str, tokenizer, config: PromptConfig, workers: int = 0):
        self.config = config
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
        return list(rendered)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None
