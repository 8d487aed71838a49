"""Augmentation: exact inverses, 8 distinct transforms, colour permutations, arc24's plan."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arclens.data.tasks import as_grid
from arclens.errors import UserError
from arclens.prompts import Augmentation, plan_augmentations, task_seed
from arclens.prompts.augmentation import TRANSFORMS, random_color_map

permutations = st.permutations(list(range(10))).map(tuple)
augmentations = st.builds(Augmentation, st.booleans(), st.integers(0, 3), permutations, st.just(()))
grids = st.integers(1, 30).flatmap(
    lambda h: st.integers(1, 30).flatmap(
        lambda w: st.lists(st.lists(st.integers(0, 9), min_size=w, max_size=w), min_size=h, max_size=h)
    )
)


@settings(max_examples=60, deadline=None)
@given(aug=augmentations, grid=grids)
def test_revert_inverts_apply(aug, grid):
    grid = as_grid(grid)
    assert aug.revert(aug.apply(grid)) == grid
    assert aug.apply(aug.revert(grid)) == grid


@settings(max_examples=20, deadline=None)
@given(task_index=st.integers(0, 399), seed=st.integers(0, 2**31), ppt=st.integers(1, 24))
def test_augment_then_revert_gives_back_every_grid_of_every_task(eval_tasks, task_index, seed, ppt):
    task = eval_tasks[task_index]
    for aug in plan_augmentations(task.task_id, len(task.train), ppt, seed):
        augmented = aug.apply_task(task)
        for j, example in enumerate(augmented.train):
            original = task.train[aug.train_order[j]]
            assert aug.revert(example.input) == original.input
            assert aug.revert(example.output) == original.output
        for example, original in zip(augmented.test, task.test):
            assert aug.revert(example.input) == original.input
            assert aug.revert(example.output) == original.output


def test_the_eight_transforms_are_distinct_and_as_documented():
    grid = as_grid([[1, 2, 3], [4, 5, 6]])  # no symmetry at all
    images = {Augmentation(h, k).apply(grid) for h, k in TRANSFORMS}
    assert len(images) == 8
    # hflip first, then rot90 counter-clockwise
    assert Augmentation(True, 0).apply(grid) == ((3, 2, 1), (6, 5, 4))
    assert Augmentation(False, 1).apply(grid) == ((3, 6), (2, 5), (1, 4))
    assert Augmentation(True, 1).apply(grid) == ((1, 4), (2, 5), (3, 6))
    assert TRANSFORMS[0] == (False, 0) and TRANSFORMS[4] == (True, 0)


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**63))
def test_colour_map_is_a_permutation(seed):
    cmap = random_color_map(random.Random(seed))
    assert sorted(cmap) == list(range(10))


def test_colour_zero_stays_fixed_about_90_percent_of_the_time():
    rng = random.Random(0)
    kept = sum(random_color_map(rng)[0] == 0 for _ in range(20000))
    # 0.9 by arc24's rule, plus the 1-in-10 chance that a full shuffle maps 0 to 0: 0.91.
    assert abs(kept / 20000 - 0.91) < 0.01


def test_plan_follows_arc24():
    plan = plan_augmentations("abc", 5, 8, seed=0)
    assert [(a.hflip, a.rot90) for a in plan] == list(TRANSFORMS)
    assert len({a.color_map for a in plan}) > 1
    assert all(sorted(a.train_order) == list(range(5)) for a in plan)
    assert len({a.train_order for a in plan}) > 1
    plan16 = plan_augmentations("abc", 5, 16, seed=0)
    assert [(a.hflip, a.rot90) for a in plan16] == [t for t in TRANSFORMS for _ in range(2)]
    assert len(plan_augmentations("abc", 5, 12, seed=0)) == 8  # arc24: 12 // 8 per transform
    # fewer than 8 still gives prompts (arc24 would give none): the first transforms in order
    assert [(a.hflip, a.rot90) for a in plan_augmentations("abc", 5, 3, seed=0)] == list(TRANSFORMS[:3])
    assert len(plan_augmentations("abc", 5, 1, seed=0)) == 1
    with pytest.raises(UserError):
        plan_augmentations("abc", 5, 0, seed=0)
    assert plan_augmentations("abc", 3, 8, 0, augment=False) == [Augmentation.identity(3)]


def test_plan_is_deterministic_and_per_task():
    assert plan_augmentations("abc", 4, 8, 7) == plan_augmentations("abc", 4, 8, 7)
    assert plan_augmentations("abc", 4, 8, 7) != plan_augmentations("abc", 4, 8, 8)
    assert plan_augmentations("abc", 4, 8, 7) != plan_augmentations("abd", 4, 8, 7)
    assert 0 <= task_seed(2**70, "x" * 1000) < 2**32


def test_augmentation_json_round_trip_and_validation():
    aug = plan_augmentations("abc", 4, 8, 1)[5]
    assert Augmentation.from_json(aug.to_json()) == aug
    assert set(aug.to_json()) == {"hflip", "rot90", "color_map", "train_order"}
    with pytest.raises(ValueError):
        Augmentation(False, 0, (0,) * 10)
    with pytest.raises(ValueError):
        Augmentation(False, 4)
    with pytest.raises(ValueError):
        Augmentation(False, 0, tuple(range(10)), (0, 0))


def test_apply_array_matches_numpy_semantics():
    a = np.arange(12).reshape(3, 4) % 10
    aug = Augmentation(True, 3, tuple(reversed(range(10))), ())
    expected = 9 - np.rot90(np.fliplr(a), 3)
    assert (aug.apply_array(a) == expected).all()
    assert aug.apply(a.tolist()) == as_grid(expected)


def test_every_grid_of_every_evaluation_task_comes_back(eval_tasks):
    assert len(eval_tasks) == 400
    for task in eval_tasks:
        for aug in plan_augmentations(task.task_id, len(task.train), 8, 0):
            augmented = aug.apply_task(task)
            shown = [task.train[i] for i in aug.train_order] + list(task.test)
            for example, original in zip(augmented.train + augmented.test, shown):
                assert aug.revert(example.input) == original.input
                assert aug.revert(example.output) == original.output
