"""ARC tasks for tests: small synthetic task files, and builders of valid tasks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def small_tasks(n_tasks: int = 4, seed: int = 0) -> dict:
    """ARC tasks with small grids (prompts of ~150-500 tokens), some with two test inputs."""
    rng = np.random.default_rng(seed)

    def grid():
        h, w = rng.integers(1, 6, size=2)
        return rng.integers(0, 10, size=(h, w)).tolist()

    tasks = {}
    for i in range(n_tasks):
        n_test = 2 if i % 2 else 1
        tasks[f"t{i:03d}"] = {
            "train": [{"input": grid(), "output": grid()} for _ in range(int(rng.integers(1, 4)))],
            "test": [{"input": grid(), "output": grid()} for _ in range(n_test)],
        }
    return tasks


def write_tasks(path: Path, n_tasks: int = 4, seed: int = 0) -> Path:
    path.write_text(json.dumps(small_tasks(n_tasks, seed)))
    return path


def write_small_tasks(path: Path, n_tasks: int, seed: int = 0) -> Path:
    """ARC tasks with 1x1..4x4 grids: prompts of a few hundred tokens, cheap on CPU."""
    rng = np.random.default_rng(seed)

    def grid():
        h, w = rng.integers(1, 5, size=2)
        return rng.integers(0, 10, size=(h, w)).tolist()

    tasks = {f"task{i:03d}": {"train": [{"input": grid(), "output": grid()} for _ in range(2)],
                              "test": [{"input": grid(), "output": grid()}]} for i in range(n_tasks)}
    path.write_text(json.dumps(tasks))
    return path


def make_task(seed: int = 0, n_train: int = 2, n_test: int = 1, with_outputs: bool = True) -> dict:
    """A valid ARC-layout task whose grids depend on ``seed`` (so tasks differ)."""

    def grid(k: int) -> list[list[int]]:
        h, w = 1 + (seed + k) % 4, 1 + (seed * 3 + k) % 5
        return [[(seed + k + r * w + c) % 10 for c in range(w)] for r in range(h)]

    train = [{"input": grid(2 * i), "output": grid(2 * i + 1)} for i in range(n_train)]
    test = []
    for i in range(n_test):
        ex = {"input": grid(100 + 2 * i)}
        if with_outputs:
            ex["output"] = grid(101 + 2 * i)
        test.append(ex)
    return {"train": train, "test": test}
