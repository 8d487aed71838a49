"""Stores built from real arc24 prompts with activations we choose, and the ground truth of every
cell token's roles computed without arclens.features.

The prompts are rendered with the tiny tokenizer (`render_samples`), so grid/row/col are the real
token roles; the activations are a function of the token's roles, planted directions included.
The truth here comes by another road than features/cells.py: the shown colour is the digit the
token spells (every cell is one digit token with the default encoder), the original colour its
preimage under the sample's colour map, and the original position the one cell that moves when
`Augmentation.revert` is applied to a grid marking the shown cell.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HOOK = "blocks.1.hook_resid_post"
KINDS = ("train_input", "train_output", "test_input", "answer")


@dataclass
class Truth:
    """Per token of one sample; -1 off the grids."""

    kind: np.ndarray
    shown: np.ndarray
    colour: np.ndarray
    row: np.ndarray
    col: np.ndarray
    border: np.ndarray
    original: list  # per token: (original grid number, row, col) or None


def render(tasks_path: Path, model_dir: Path, **prompt):
    from arclens.data.loaders import load_tasks
    from arclens.prompts import PromptConfig, load_tokenizer, render_samples

    config = PromptConfig(**prompt)
    tasks = load_tasks(str(tasks_path))
    tokenizer = load_tokenizer(str(model_dir))
    return tasks, tokenizer, config, list(render_samples(tasks, tokenizer, config))


def _original_position(aug, shown_shape, r, c):
    """Where shown cell (r, c) comes from: revert a grid that marks it, find the marked cell."""
    marker = np.zeros(shown_shape, np.int64)
    marker[r, c] = 1
    back = np.asarray(aug.revert(marker))
    hit = np.argwhere(back == int(np.argsort(aug.color_map)[1]))  # revert maps colour 1 to its preimage
    assert len(hit) == 1
    return int(hit[0][0]), int(hit[0][1])


def truth(sample, task, tokenizer) -> Truth:
    """The roles of every token of a rendered `prompts.Sample`."""
    return truth_of(sample.augmentation, sample.test_index, sample.token_ids, sample.grid, sample.row, sample.col,
                    task, tokenizer)


def truth_of(aug, test_index, token_ids, grid, row, col, task, tokenizer) -> Truth:
    """The roles of every token of a sample, from its stored columns, its task and its augmentation."""
    n = len(aug.train_order)
    grid, row, col = (np.asarray(a, np.int64) for a in (grid, row, col))
    m = len(grid)
    out = {k: np.full(m, -1, np.int64) for k in ("kind", "shown", "colour", "row", "col", "border")}
    original = [None] * m
    inverse = np.argsort(aug.color_map)
    for i in np.flatnonzero(grid >= 0):
        g, r, c = int(grid[i]), int(row[i]), int(col[i])
        text = tokenizer.decode([int(token_ids[i])])
        assert text.isdigit() and len(text) == 1, f"cell token {text!r} is not one digit"
        shown = int(text)
        if g < 2 * n:
            example = task.train[aug.train_order[g // 2]]
            source, g0, kind = (example.input if g % 2 == 0 else example.output), 2 * aug.train_order[g // 2] + g % 2, g % 2
        else:
            t = task.test[test_index]
            source, g0, kind = (t.input if g == 2 * n else t.output), g, (2 if g == 2 * n else 3)
        shown_grid = np.asarray(aug.apply(source))
        h, w = shown_grid.shape
        assert shown_grid[r, c] == shown, "the token's digit is the shown colour"
        r0, c0 = _original_position(aug, (h, w), r, c)
        assert int(np.asarray(source)[r0, c0]) == int(inverse[shown])
        out["kind"][i], out["shown"][i], out["colour"][i] = kind, shown, int(inverse[shown])
        out["row"][i], out["col"][i] = r, c
        out["border"][i] = int(r in (0, h - 1) or c in (0, w - 1))
        original[i] = (g0, r0, c0)
    return Truth(original=original, **out)


def store_metadata(model_dir: Path, tasks_path: Path, tasks, config, d_model: int, dtype: str = "float32") -> dict:
    from arclens.features.sources import tasks_fingerprint
    from arclens.model.config import QwenConfig
    from arclens.model.fingerprint import model_fingerprint

    return {
        "model": {"name": str(model_dir), "config": QwenConfig.from_pretrained(model_dir).to_json(),
                  "dtype": dtype, "random_weights": True, "fingerprint": model_fingerprint(model_dir)},
        "hooks": [HOOK], "dtype": dtype, "d_model": d_model, "positions": "all", "prompt": config.to_json(),
        "tasks": {"source": str(tasks_path), "count": len(tasks),
                  "fingerprint": tasks_fingerprint(tasks, config.with_answer)},
    }


def write_store(dest: Path, samples, activations, metadata: dict, shard_bytes: int = 200_000,
                last_only: bool = False) -> None:
    """`activations(sample) -> [n, d]` float32 for every sample, written in the given order; with
    `last_only`, only each prompt's last token (an extract --positions last store)."""
    from arclens.store.writer import StoreWriter, open_or_create_store

    if last_only:
        metadata = dict(metadata, positions="last")
    open_or_create_store(str(dest), metadata)
    with StoreWriter(str(dest), "w0", shard_bytes=shard_bytes) as w:
        for s in samples:
            n = len(s.token_ids)
            meta = {"key": s.key, "task_id": s.task_id, "test_index": s.test_index,
                    "augmentation": s.augmentation.to_json(), "prompt_tokens": n}
            keep = slice(n - 1, n) if last_only else slice(0, n)
            w.add(meta, {HOOK: np.asarray(activations(s), np.float32)[keep],
                         "position": np.arange(n, dtype=np.int32)[keep], "token_id": s.token_ids.astype(np.int32)[keep],
                         "grid": s.grid[keep], "row": s.row[keep], "col": s.col[keep]})


def write_tasks(path: Path, n_tasks: int, seed: int, colour3_share: float = 0.3, two_tests: bool = False,
                ids: list[str] | None = None) -> Path:
    """Small tasks (2 train pairs, grids up to 5x5) where colour 3 is common in every grid; with
    `two_tests`, every other task has two test inputs. `ids` names the tasks (any strings)."""
    rng = np.random.default_rng(seed)

    def grid():
        h, w = rng.integers(2, 6, size=2)
        g = rng.integers(0, 10, size=(h, w))
        g[rng.random((h, w)) < colour3_share] = 3
        return g.tolist()

    ids = ids or [f"p{i:03d}" for i in range(n_tasks)]
    tasks = {ids[i]: {"train": [{"input": grid(), "output": grid()} for _ in range(2)],
                      "test": [{"input": grid(), "output": grid()} for _ in range(1 + (two_tests and i % 2))]}
             for i in range(n_tasks)}
    path.write_text(json.dumps(tasks))
    return path


def planted_activations(d_model: int, seed: int = 0, noise: float = 0.05, n_distractors: int = 6):
    """(activations(sample), truth_of(sample), directions): direction 0 on original-colour-3 cells of
    train-output grids, direction 1 on every cell of (shown) row 0, and distractor directions on
    random tokens (seeded by key), plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d_model, 2 + n_distractors)))
    directions = q.T  # orthonormal rows

    def make(sample, t: Truth):
        import zlib

        r = np.random.default_rng(zlib.crc32(sample.key.encode()))
        n = len(sample.token_ids)
        x = noise * r.standard_normal((n, d_model))
        colour3_out = (t.kind == 1) & (t.colour == 3)
        x += np.outer(colour3_out * (2.0 + 0.2 * r.random(n)), directions[0])
        x += np.outer((t.row == 0) * (2.0 + 0.2 * r.random(n)), directions[1])
        for j in range(n_distractors):
            x += np.outer((r.random(n) < 0.08) * (1.5 + 0.2 * r.random(n)), directions[2 + j])
        return x.astype(np.float32)

    return make, directions


def build_fdir(root: Path, model_dir: Path, *, task_ids: list[str] | None = None, n_tasks: int = 2,
               predictions_per_task: int = 4, d_sae: int = 16, seed: int = 0, **features) -> Path:
    """A small real FDIR, written by `arclens features` (the Python entry) from a store of planted
    activations over real prompts of the tiny tokenizer and a random standard SAE whose first
    latents read the planted directions. `task_ids` may be any strings (e.g. HTML, to test
    escaping). `features` are FeaturesSettings fields (top_k=..., context=...). Returns FDIR."""
    from arclens.features.run import FeaturesSettings, run
    from arclens.sae import SAEConfig, new_sae, save

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    d_model = 64
    tasks_path = write_tasks(root / "tasks.json", n_tasks if task_ids is None else len(task_ids), seed, ids=task_ids)
    tasks, tokenizer, config, samples = render(tasks_path, model_dir, predictions_per_task=predictions_per_task,
                                               with_answer=True)
    by_id = {t.task_id: t for t in tasks}
    make, directions = planted_activations(d_model, seed)
    truths = {s.key: truth(s, by_id[s.task_id], tokenizer) for s in samples}
    write_store(root / "store", samples, lambda s: make(s, truths[s.key]),
                store_metadata(model_dir, tasks_path, tasks, config, d_model))
    rng = np.random.default_rng(seed)
    w_enc = rng.standard_normal((d_model, d_sae)) / np.sqrt(d_model)
    w_enc[:, : len(directions)] = directions.T[:, : d_sae]
    cfg = SAEConfig("standard", d_model, d_sae, d_model, hook_name=HOOK)
    save(new_sae(cfg, w_enc, -np.full(d_sae, 0.5), w_enc.T.copy(), np.zeros(d_model)), str(root / "sae"))
    out = root / "fdir"
    run(FeaturesSettings(sae=str(root / "sae"), out=out, store=str(root / "store"), progress=False, **features))
    return out


if __name__ == "__main__":  # python -m tests.support.planted_roles OUT: the example FDIR of docs/FEATURES.md
    import os
    import sys

    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from arclens.model.random_checkpoint import write_random_model

    dest = Path(sys.argv[1])
    model = write_random_model(dest / "tiny-random-model", preset="tiny", seed=0)
    print(build_fdir(dest, model, task_ids=["t-one", "<b>html<i>&amp;\"'"], d_sae=8, top_k=4, quantile_examples=2,
                     quantiles=4, context=6, logits=5))
