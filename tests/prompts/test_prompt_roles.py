"""Token roles on real tasks: every cell of every shown grid exactly once, right digit, right place."""

from __future__ import annotations

import numpy as np
import pytest

from arclens.prompts import PromptConfig, render_samples

ONE_CHAR_ENCODERS = [
    "GridShapeEncoder(RowNumberEncoder(MinimalGridEncoder()))",
    "GridCodeBlockEncoder(MinimalGridEncoder())",
    "GridCodeBlockEncoder(GridWithSeparationEncoder('|'))",
    "MinimalGridEncoder()",
]
VERSIONS = [
    "output-from-examples-v0",
    "output-from-examples-v1",
    "input-from-inputs-v0",
    "output-from-outputs-v0",
]


def _shown_grids(sample, task, version, with_answer):
    """Grid number -> the grid as the prompt shows it (augmented, train examples reordered)."""
    aug, n = sample.augmentation, len(task.train)
    test = task.test[sample.test_index]
    shows_inputs = version != "output-from-outputs-v0"
    shows_outputs = version != "input-from-inputs-v0"
    grids = {}
    for j, i in enumerate(aug.train_order):
        if shows_inputs:
            grids[2 * j] = aug.apply(task.train[i].input)
        if shows_outputs:
            grids[2 * j + 1] = aug.apply(task.train[i].output)
    if version.startswith("output-from-examples"):
        grids[2 * n] = aug.apply(test.input)
    if with_answer and version == "input-from-inputs-v0":  # its answer is the test input
        grids[2 * n] = aug.apply(test.input)
    elif with_answer:
        grids[2 * n + 1] = aug.apply(test.output)
    return grids


def _check_sample(sample, task, version, with_answer, tokenizer):
    assert sample.token_ids.dtype == np.int32
    assert sample.grid.dtype == sample.row.dtype == sample.col.dtype == np.int16
    assert len(sample.token_ids) == len(sample.grid) == len(sample.row) == len(sample.col)
    assert sample.token_ids.tolist() == tokenizer(sample.text)["input_ids"]
    pieces = tokenizer.convert_ids_to_tokens(sample.token_ids.tolist())
    expected = _shown_grids(sample, task, version, with_answer)
    found = {}
    for pos in np.flatnonzero(sample.grid >= 0):
        key = (int(sample.grid[pos]), int(sample.row[pos]), int(sample.col[pos]))
        assert key not in found, f"{sample.key}: cell {key} found twice"
        found[key] = pieces[pos]
    assert ((sample.grid < 0) == (sample.row < 0)).all() and ((sample.grid < 0) == (sample.col < 0)).all()
    cells = {
        (g, r, c): str(v)
        for g, grid in expected.items()
        for r, row in enumerate(grid)
        for c, v in enumerate(row)
    }
    assert found == cells, f"{sample.key}: token roles differ from the grids shown"


@pytest.mark.parametrize("encoder", ONE_CHAR_ENCODERS)
def test_roles_on_real_tasks_under_augmentation(encoder, eval_tasks, tokenizer):
    tasks = eval_tasks[::80]  # 5 tasks spread over the set
    by_id = {t.task_id: t for t in tasks}
    config = PromptConfig(encoder=encoder, predictions_per_task=8, seed=5, with_answer=True)
    n = 0
    for sample in render_samples(tasks, tokenizer, config):
        _check_sample(sample, by_id[sample.task_id], config.version, True, tokenizer)
        n += 1
    assert n == 8 * sum(len(t.test) for t in tasks)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("with_answer", [False, True])
def test_roles_for_every_prompt_version(version, with_answer, eval_tasks, tokenizer):
    tasks = eval_tasks[7:10]
    by_id = {t.task_id: t for t in tasks}
    config = PromptConfig(version=version, predictions_per_task=8, seed=1, with_answer=with_answer)
    for sample in render_samples(tasks, tokenizer, config):
        _check_sample(sample, by_id[sample.task_id], version, with_answer, tokenizer)


def test_repeat_encoder_marks_every_repeat_of_a_cell(eval_tasks, tokenizer):
    task = eval_tasks[3]
    config = PromptConfig(encoder="GridCodeBlockEncoder(RepeatNumberEncoder(3))", augment=False)
    sample = next(render_samples([task], tokenizer, config))
    pos = np.flatnonzero(sample.grid >= 0)
    keys = list(zip(sample.grid[pos].tolist(), sample.row[pos].tolist(), sample.col[pos].tolist()))
    counts = {k: keys.count(k) for k in set(keys)}
    assert set(counts.values()) == {3}  # Qwen-style digits: each of a cell's 3 characters is a token
    assert len(counts) == sum(len(g) * len(g[0]) for e in task.train for g in (e.input, e.output)) + len(
        task.test[0].input
    ) * len(task.test[0].input[0])


def test_replace_number_encoder_roles_never_lie(eval_tasks, tokenizer):
    # BPE may merge arc24's letter symbols into one token: such tokens are -1, the others exact.
    task = eval_tasks[0]
    config = PromptConfig(
        encoder="GridShapeEncoder(RowNumberEncoder(ReplaceNumberEncoder(MinimalGridEncoder())))"
    )
    symbols = "ñò÷ûąćďęĚĞ"
    n_cells = 0
    for sample in render_samples([task], tokenizer, config):
        offsets = tokenizer(sample.text, return_offsets_mapping=True)["offset_mapping"]
        shown = _shown_grids(sample, task, config.version, False)
        for pos in np.flatnonzero(sample.grid >= 0):
            g, r, c = int(sample.grid[pos]), int(sample.row[pos]), int(sample.col[pos])
            start, end = offsets[pos]
            assert sample.text[start:end] == symbols[shown[g][r][c]]
            n_cells += 1
    assert n_cells > 0
