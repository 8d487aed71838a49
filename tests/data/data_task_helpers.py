"""Builders of valid ARC tasks for the data tests (imported by tests and conftest.py)."""

from __future__ import annotations


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
