"""arc24's test-time augmentation (scripts/arc24/data_augmentation.py + inference.py), seeded per task.

One augmentation of a task is: a dihedral transform of every grid (horizontal flip first, then
`np.rot90` k times, counter-clockwise), a colour permutation of every grid, and a shuffled order of
the train examples. arc24's inference walks the 8 transforms in the order of
`itertools.product([False, True], [0, 1, 2, 3])` and makes `predictions_per_task // 8` prompts for
each, drawing a fresh colour map (python `random`) and train order (numpy's legacy global
generator) for each prompt.

We draw from the same two kinds of generator in the same order, but seed them per task from
(seed, task_id) instead of once per run, so a task's prompts do not depend on which other tasks
share the run (streams, workers, resume). Running arc24's `create_prompts` on that one task after
`set_random_seed(task_seed(seed, task_id))` gives the very same prompts; the golden tests check it.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from itertools import product

import numpy as np

from arclens.data.tasks import Example, Grid, Task
from arclens.errors import UserError

N_TRANSFORMS = 8
# arc24's order: itertools.product([False, True], [0, 1, 2, 3]) -> (hflip, n_rot90)
TRANSFORMS: tuple[tuple[bool, int], ...] = tuple(product([False, True], [0, 1, 2, 3]))
CHANGE_BACKGROUND_PROBABILITY = 0.1  # arc24: colour 0 stays 0 in 90% of the colour maps
IDENTITY_COLORS = tuple(range(10))


def _as_array(grid) -> np.ndarray:
    return np.asarray(grid, dtype=np.int64).reshape(len(grid), -1)


def _to_grid(arr: np.ndarray) -> Grid:
    return tuple(map(tuple, arr.tolist()))


@dataclass(frozen=True)
class Augmentation:
    """One augmentation, recorded per sample. `color_map[c]` is the colour that c becomes;
    `train_order[j]` is the original index of the j-th example the prompt shows."""

    hflip: bool = False
    rot90: int = 0
    color_map: tuple[int, ...] = IDENTITY_COLORS
    train_order: tuple[int, ...] = field(default=())

    def __post_init__(self):
        if sorted(self.color_map) != list(range(10)):
            raise ValueError(f"color_map must be a permutation of 0-9, got {self.color_map}")
        if sorted(self.train_order) != list(range(len(self.train_order))):
            raise ValueError(f"train_order must be a permutation, got {self.train_order}")
        if self.rot90 not in (0, 1, 2, 3):
            raise ValueError(f"rot90 must be 0-3, got {self.rot90}")

    @classmethod
    def identity(cls, n_train: int) -> Augmentation:
        return cls(False, 0, IDENTITY_COLORS, tuple(range(n_train)))

    def apply(self, grid) -> Grid:
        return _to_grid(self.apply_array(_as_array(grid)))

    def apply_array(self, arr: np.ndarray) -> np.ndarray:
        """`apply` on a 2-D integer array (the fast path prompt rendering uses)."""
        if self.hflip:
            arr = np.flip(arr, axis=1)
        arr = np.rot90(arr, k=self.rot90)
        return np.asarray(self.color_map)[arr]

    def revert(self, grid) -> Grid:
        arr = np.rot90(_as_array(grid), k=-self.rot90)
        if self.hflip:
            arr = np.flip(arr, axis=1)
        return _to_grid(np.argsort(self.color_map)[arr])  # argsort of a permutation is its inverse

    def apply_task(self, task: Task) -> Task:
        """Every grid transformed (test outputs too) and the train examples in `train_order`."""
        if len(self.train_order) != len(task.train):
            raise ValueError(
                f"train_order has {len(self.train_order)} entries for {len(task.train)} examples"
            )

        def example(e: Example) -> Example:
            return Example(self.apply(e.input), None if e.output is None else self.apply(e.output))

        train = tuple(example(task.train[i]) for i in self.train_order)
        return Task(task.task_id, train, tuple(example(e) for e in task.test))

    def to_json(self) -> dict:
        return {
            "hflip": self.hflip,
            "rot90": self.rot90,
            "color_map": list(self.color_map),
            "train_order": list(self.train_order),
        }

    @classmethod
    def from_json(cls, d: dict) -> Augmentation:
        return cls(bool(d["hflip"]), int(d["rot90"]), tuple(d["color_map"]), tuple(d["train_order"]))


def task_seed(seed: int, task_id: str) -> int:
    """A 32-bit seed for one task (numpy's legacy generator takes at most 2**32 - 1)."""
    digest = hashlib.sha256(f"{int(seed)}/{task_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def random_color_map(rng: random.Random) -> tuple[int, ...]:
    """arc24's get_random_color_map, drawing from `rng` exactly as arc24 draws from `random`."""
    if rng.random() < CHANGE_BACKGROUND_PROBABILITY:
        new_colors = list(range(10))
        rng.shuffle(new_colors)
    else:
        new_colors = list(range(1, 10))
        rng.shuffle(new_colors)
        new_colors = [0] + new_colors
    return tuple(new_colors)


def plan_augmentations(
    task_id: str, n_train: int, predictions_per_task: int, seed: int, augment: bool = True
) -> list[Augmentation]:
    """The augmentations of one task, in aug_index order (the same for all its test inputs).

    arc24 makes predictions_per_task // 8 prompts per transform, so fewer than 8 makes none;
    we then take the first `predictions_per_task` transforms, one prompt each, so that every
    test input still gets at least one prompt.
    """
    if not augment:
        return [Augmentation.identity(n_train)]
    if predictions_per_task < 1:
        raise UserError(f"--predictions-per-task: expected a positive number, got {predictions_per_task}")
    if predictions_per_task >= N_TRANSFORMS:
        per = predictions_per_task // N_TRANSFORMS
        plan = [t for t in TRANSFORMS for _ in range(per)]
    else:
        plan = list(TRANSFORMS[:predictions_per_task])
    s = task_seed(seed, task_id)
    py_rng, np_rng = random.Random(s), np.random.RandomState(s)
    augmentations = []
    for hflip, n_rot90 in plan:
        color_map = random_color_map(py_rng)
        order = np.arange(n_train)
        np_rng.shuffle(order)  # arc24's permute_train_samples
        augmentations.append(Augmentation(hflip, n_rot90, color_map, tuple(int(i) for i in order)))
    return augmentations
