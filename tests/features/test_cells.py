"""Property tests of the cell mapping (features/cells.py): a shown cell's original position and
colour, through every augmentation, against prompts.Augmentation's own apply and revert."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from arclens.data.tasks import Example, Task
from arclens.features.cells import (
    CELL_CODE_GRID,
    SampleCells,
    grid_kind,
    original_number,
    prompt_slots,
    shown_index_map,
    shown_to_original,
    task_grids,
)
from arclens.prompts import Augmentation


@st.composite
def grids(draw, max_side=7):
    h = draw(st.integers(1, max_side))
    w = draw(st.integers(1, max_side))
    return np.asarray(draw(st.lists(st.lists(st.integers(0, 9), min_size=w, max_size=w), min_size=h, max_size=h)))


@st.composite
def augmentations(draw, n_train=None):
    n = draw(st.integers(1, 4)) if n_train is None else n_train
    return Augmentation(draw(st.booleans()), draw(st.integers(0, 3)), tuple(draw(st.permutations(range(10)))),
                        tuple(draw(st.permutations(range(n)))))


@settings(max_examples=200, deadline=None)
@given(grid=grids(), aug=augmentations())
def test_shown_cells_come_from_their_original_cells(grid, aug):
    shown = np.asarray(aug.apply(grid))
    rows, cols = np.divmod(np.arange(shown.size), shown.shape[1])
    r0, c0 = shown_to_original(aug, grid.shape, rows, cols)
    # the shown colour is the colour map of the original cell's colour, cell by cell
    np.testing.assert_array_equal(shown[rows, cols], np.asarray(aug.color_map)[grid[r0, c0]])
    # every original cell is shown exactly once
    assert sorted(zip(r0.tolist(), c0.tolist())) == [(r, c) for r in range(grid.shape[0]) for c in range(grid.shape[1])]


@settings(max_examples=200, deadline=None)
@given(grid=grids(), aug=augmentations())
def test_index_map_agrees_with_revert(grid, aug):
    """Reverting the shown grid puts each shown cell's colour back at its original position."""
    index = shown_index_map(aug, grid.shape)
    shown = np.asarray(aug.apply(grid))
    back = np.asarray(aug.revert(shown))
    np.testing.assert_array_equal(back.ravel()[index.ravel()], np.argsort(aug.color_map)[shown.ravel()])
    np.testing.assert_array_equal(back, grid)


@st.composite
def tasks_and_augs(draw):
    n = draw(st.integers(1, 3))
    train = tuple(Example(tuple(map(tuple, draw(grids(5)).tolist())), tuple(map(tuple, draw(grids(5)).tolist())))
                  for _ in range(n))
    test = (Example(tuple(map(tuple, draw(grids(5)).tolist())), tuple(map(tuple, draw(grids(5)).tolist()))),)
    return Task("t", train, test), draw(augmentations(n))


@settings(max_examples=100, deadline=None)
@given(case=tasks_and_augs(), data=st.data())
def test_token_roles_of_any_cell(case, data):
    """For any shown cell of any grid: kind, shown and original colour, border and the original
    cell code, each checked against the task and Augmentation directly."""
    task, aug = case
    n = len(task.train)
    cells = SampleCells("t/0/0", task_grids(task)[0], aug)
    numbers = list(range(2 * n + 2))
    picks = data.draw(st.lists(st.sampled_from(numbers), min_size=1, max_size=12))
    grid, row, col, expected = [], [], [], []
    for number in picks:
        g0 = original_number(number, aug)
        original = task_grids(task)[0][g0]
        shown = np.asarray(aug.apply(original))
        r = data.draw(st.integers(0, shown.shape[0] - 1))
        c = data.draw(st.integers(0, shown.shape[1] - 1))
        (r0,), (c0,) = shown_to_original(aug, original.shape, [r], [c])
        h, w = shown.shape
        expected.append((grid_kind(number, n), int(shown[r, c]), int(original[r0, c0]),
                         int(r in (0, h - 1) or c in (0, w - 1)), g0 * CELL_CODE_GRID + r0 * 30 + c0))
        grid.append(number)
        row.append(r)
        col.append(c)
    grid.append(-1)  # and a token that is no cell
    row.append(-1)
    col.append(-1)
    roles = cells.roles(np.asarray(grid), np.asarray(row), np.asarray(col))
    got = list(zip(roles.kind.tolist(), roles.shown.tolist(), roles.colour.tolist(), roles.border.tolist(),
                   roles.cell.tolist()))
    assert got[:-1] == expected
    assert got[-1] == (-1, -1, -1, -1, -1)
    assert np.asarray(aug.color_map)[roles.colour[:-1]].tolist() == roles.shown[:-1].tolist()


def test_the_same_original_cell_under_every_augmentation():
    """An original cell gets the same code in every augmentation that shows it (what consistency
    counts on), train examples reordered by train_order included."""
    from arclens.prompts import plan_augmentations

    rng = np.random.default_rng(0)
    g = [tuple(map(tuple, rng.integers(0, 10, (3, 4)).tolist())) for _ in range(6)]
    task = Task("t", (Example(g[0], g[1]), Example(g[2], g[3])), (Example(g[4], g[5]),))
    seen: dict[int, set] = {}
    for aug in plan_augmentations("t", 2, 8, seed=0):
        cells = SampleCells("t/0/0", task_grids(task)[0], aug)
        for number, shown in cells.shown.items():
            rows, cols = np.divmod(np.arange(shown.size), shown.shape[1])
            roles = cells.roles(np.full(shown.size, number), rows, cols)
            for code, colour in zip(roles.cell.tolist(), roles.colour.tolist()):
                seen.setdefault(code, set()).add(colour)
    assert len(seen) == 6 * 12  # every original cell of the six grids, each once
    assert all(len(colours) == 1 for colours in seen.values())  # and always with the same original colour


def test_prompt_slots_follow_the_prompt_versions():
    assert prompt_slots("output-from-examples-v1", 2, False) == (0, 1, 2, 3, 4)
    assert prompt_slots("output-from-examples-v1", 2, True) == (0, 1, 2, 3, 4, 5)
    assert prompt_slots("input-from-inputs-v0", 2, True) == (0, 2, 4)
    assert prompt_slots("output-from-outputs-v0", 2, True) == (1, 3, 5)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_role_columns_are_the_role_matrix_rows(seed):
    """The host's per-token role columns (coverage counts) and the device's one-hot role matrix
    (masses) name the same columns for every token."""
    import jax.numpy as jnp

    from arclens.features.device import role_matrix
    from arclens.features.layout import N_ROLE_COLUMNS, role_columns

    n = 64  # one shape: role_matrix compiles once
    rng = np.random.default_rng(seed)
    cell = rng.random(n) < 0.7
    kind = np.where(cell, rng.integers(0, 4, n), -1)
    fields = [kind] + [np.where(cell, rng.integers(0, hi, n), -1) for hi in (10, 10, 30, 30, 2)]
    cols = role_columns(*fields)
    one_hot = np.zeros((n, N_ROLE_COLUMNS))
    for i, row in enumerate(cols):
        one_hot[i, row[row >= 0]] = 1
    dense = np.asarray(role_matrix(*(jnp.asarray(f.astype(np.int8)) for f in fields)))
    np.testing.assert_array_equal(dense, one_hot)


def test_a_cell_outside_its_grid_names_the_sample_the_token_and_the_shape():
    """A store made from other tasks: its cell tokens do not fit the given task's grids. The user
    gets one line naming the sample, the token and the grid's shape (or that it is absent)."""
    import pytest

    from arclens.errors import UserError

    g = [((1, 2, 3), (4, 5, 6)) for _ in range(4)]  # 2 x 3 grids
    task = Task("t", (Example(g[0], g[1]),), (Example(g[2], g[3]),))
    cells = SampleCells("t/0/0", task_grids(task)[0], Augmentation(False, 0, tuple(range(10)), (0,)))
    grid, row, col = np.array([-1, 0, 0, 1]), np.array([-1, 0, 1, 2]), np.array([-1, 2, 0, 0])
    assert cells.roles(grid[:3], row[:3], col[:3]).kind.tolist() == [-1, 0, 0]  # (the first three fit)
    with pytest.raises(UserError, match=r"sample t/0/0: token 3 is cell \(grid 1, row 2, col 0\) but that grid "
                                        r"of the task is 2x3"):
        cells.roles(grid, row, col)
    with pytest.raises(UserError, match=r"token 1 is cell \(grid 9, row 0, col 0\) but that grid of the task is absent"):
        cells.roles(np.array([-1, 9]), np.array([-1, 0]), np.array([-1, 0]))


@st.composite
def samples_end_to_end(draw):
    """1-4 samples of different tasks and augmentations, and per sample a few tokens: cells of
    its shown grids and tokens that are no cell, in any order."""
    samples, grid, row, col, lengths, tasks = [], [], [], [], [], []
    for i in range(draw(st.integers(1, 4))):
        if tasks and draw(st.booleans()):  # another augmentation of a task already in the batch
            task, grids = draw(st.sampled_from(tasks))
            aug = draw(augmentations(len(task.train)))
        else:
            task, aug = draw(tasks_and_augs())
            grids = task_grids(task)[0]  # (its samples share these arrays, as a store's do)
            tasks.append((task, grids))
        cells = SampleCells(f"t{i}/0/0", grids, aug)
        n = 0
        for _ in range(draw(st.integers(0, 8))):
            if draw(st.booleans()):
                number = draw(st.sampled_from(sorted(cells.shown)))
                h, w = cells.shown[number].shape
                grid.append(number), row.append(draw(st.integers(0, h - 1))), col.append(draw(st.integers(0, w - 1)))
            else:
                grid.append(-1), row.append(-1), col.append(-1)
            n += 1
        samples.append(cells)
        lengths.append(n)
    return samples, np.asarray(lengths), np.asarray(grid, np.int64), np.asarray(row, np.int64), np.asarray(col, np.int64)


@settings(max_examples=100, deadline=None)
@given(case=samples_end_to_end())
def test_roles_of_samples_laid_end_to_end_are_each_samples_own(case):
    """The batch's lookup (one set of tables for every sample of a batch) gives each token the
    roles its own sample alone gives it, and says which sample each cell token is of."""
    from arclens.features.cells import lookup_roles

    samples, lengths, grid, row, col = case
    found = lookup_roles(samples, lengths, grid, row, col)
    together = found.tokens(len(grid))
    start = 0
    for i, (cells, n) in enumerate(zip(samples, lengths.tolist())):
        alone = cells.roles(grid[start:start + n], row[start:start + n], col[start:start + n])
        for name in ("kind", "colour", "shown", "row", "col", "border", "cell"):
            np.testing.assert_array_equal(getattr(together, name)[start:start + n], getattr(alone, name))
        for j in range(start, start + n):  # and each cell token against its shown grid and the task
            if grid[j] >= 0:
                shown = cells.shown[int(grid[j])]
                h, w = shown.shape
                assert together.shown[j] == shown[row[j], col[j]]
                assert together.border[j] == int(row[j] in (0, h - 1) or col[j] in (0, w - 1))
                original = cells.original(int(grid[j]))
                (r0,), (c0,) = shown_to_original(cells.aug, original.shape, [row[j]], [col[j]])
                assert together.colour[j] == original[r0, c0]
                assert together.cell[j] == original_number(int(grid[j]), cells.aug) * CELL_CODE_GRID + r0 * 30 + c0
        assert (found.sample[(found.at >= start) & (found.at < start + n)] == i).all()
        start += n
    np.testing.assert_array_equal(found.at, np.flatnonzero(grid >= 0))


def test_a_bad_cell_in_a_later_sample_of_a_batch_is_named_in_that_sample():
    import pytest

    from arclens.errors import UserError
    from arclens.features.cells import lookup_roles

    g = [((1, 2, 3), (4, 5, 6)) for _ in range(4)]  # 2 x 3 grids
    task = Task("t", (Example(g[0], g[1]),), (Example(g[2], g[3]),))
    identity = Augmentation(False, 0, tuple(range(10)), (0,))
    samples = [SampleCells(f"t/0/{i}", task_grids(task)[0], identity) for i in range(2)]
    grid, row, col = np.array([0, 1, -1, 0, 1]), np.array([0, 1, -1, 1, 0]), np.array([2, 2, -1, 2, 3])
    with pytest.raises(UserError, match=r"sample t/0/1: token 2 is cell \(grid 1, row 0, col 3\) but that grid "
                                        r"of the task is 2x3"):
        lookup_roles(samples, np.array([2, 3]), grid, row, col)
