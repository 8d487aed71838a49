"""The batch schedule of a job: a pure function of its whole sample set.

Why pure: a resumed run must compute every sample in the same batch, of the same shape, in the
same row, as an uninterrupted run would, or its activations differ in the last bits (in bf16, a
batch of another shape gave a relative error of 7.7e-3). So nothing here depends on what is
already committed:

1. **Windows.** The task list (all of a run's tasks, or all of a worker unit's) is cut into
   consecutive runs of whole tasks of about ``window_samples`` samples (``windows``).
2. **Batches.** Every sample of a window is rendered and the window is planned on its own
   (``plan_window``): its ladder of lengths comes from its own length histogram, and
   ``batching.plan_batches`` sorts by (length, key), so the plan depends on the set of samples,
   never on their order or on other windows.
3. **Order.** Batches are numbered window by window; ``order_seed`` permutes that numbering for
   consumers that want shuffled batches (``ExtractJob.device_batches``).

Resume then *skips* what is committed rather than re-planning what is left: a window whose every
sample is committed is not even rendered, a batch whose every sample is committed is not
computed, and a partly committed batch is computed whole with only its missing samples written
(docs/EXTRACT.md section 2 says what that costs).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from arclens.data.tasks import Task
from arclens.pipeline.batching import Batch, Schedule, plan_batches
from arclens.prompts import PromptConfig, Sample, plan_augmentations, sample_key


def task_keys(task: Task, config: PromptConfig) -> list[str]:
    """Every sample key of a task, without rendering anything."""
    n_aug = len(plan_augmentations(task.task_id, len(task.train), config.predictions_per_task, config.seed,
                                   config.augment))
    return [sample_key(task.task_id, t, a) for t in range(len(task.test)) for a in range(n_aug)]


def windows(tasks: Sequence[Task], config: PromptConfig, window_samples: int) -> list[tuple[Task, ...]]:
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


@dataclass(frozen=True)
class Planner:
    """How every window is cut into batches: the job's token budget and mesh width."""

    tokens_per_batch: int  # for the whole mesh (per device x data-parallel width)
    max_shapes: int
    row_multiple: int  # the data-parallel width: every B is a multiple of it

    def plan(self, samples: Sequence[Sample]) -> Schedule:
        return plan_batches([len(s.token_ids) for s in samples], [s.key for s in samples],
                            tokens_per_batch=self.tokens_per_batch, max_shapes=self.max_shapes,
                            row_multiple=self.row_multiple)


@dataclass(frozen=True)
class ScheduledBatch:
    """One batch of the schedule: ``batch.rows`` index ``samples`` (its window's samples)."""

    index: int  # position in the job's order (after an order_seed permutation)
    batch: Batch
    samples: Sequence[Sample]

    @property
    def keys(self) -> list[str]:
        return [self.samples[i].key for i in self.batch.rows]


def scheduled_batches(
    renderer,
    wins: Sequence[Sequence[Task]],
    planner: Planner,
    *,
    needed: Sequence[bool] | None = None,
    order_seed: int | None = None,
    on_plan: Callable[[Schedule, Sequence[Sample]], None] | None = None,
) -> Iterator[ScheduledBatch]:
    """The batches of ``wins`` in schedule order.

    Without ``order_seed`` windows stream: the next window renders (``renderer.submit``) while
    the batches of this one are consumed. ``needed[w]`` False leaves window ``w`` out unrendered
    (every sample of it is committed; its batches are not numbered). With ``order_seed`` every
    window is rendered first and the batches of all of them are permuted by
    ``numpy.random.default_rng(order_seed)``. ``on_plan(schedule, samples)`` sees each window's
    schedule as soon as it exists (the job starts compiling its shapes there).
    """
    todo = [w for i, w in enumerate(wins) if needed is None or needed[i]]
    if order_seed is not None:
        planned = []
        for window in todo:
            samples = renderer.collect(renderer.submit(window))
            schedule = planner.plan(samples)
            if on_plan is not None:
                on_plan(schedule, samples)
            planned += [(samples, b) for b in schedule.batches]
        order = np.random.default_rng(order_seed).permutation(len(planned))
        for index, j in enumerate(order):
            samples, batch = planned[int(j)]
            yield ScheduledBatch(index, batch, samples)
        return
    pending = iter(todo)
    rendering = deque(renderer.submit(w) for w in (next(pending, None), next(pending, None)) if w is not None)
    index = 0
    while rendering:
        samples = renderer.collect(rendering.popleft())
        nxt = next(pending, None)
        if nxt is not None:
            rendering.append(renderer.submit(nxt))  # keeps one window rendering ahead
        schedule = planner.plan(samples)
        if on_plan is not None:
            on_plan(schedule, samples)
        for batch in schedule.batches:
            yield ScheduledBatch(index, batch, samples)
            index += 1
