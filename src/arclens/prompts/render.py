"""Tasks -> the exact token sequences the model sees, with each token's grid role.

`render_samples` is the one entry point the extract and infer pipelines use. A sample is one
(task, test input, augmentation); its text is arc24's prompt for the augmented task (see chat.py
for how it is assembled from a skeleton), its token ids are the tokenizer's for that text, and
grid/row/col come from roles.py.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from arclens.data.tasks import Task
from arclens.errors import UserError
from arclens.prompts.augmentation import Augmentation, plan_augmentations
from arclens.prompts.chat import Skeleton, check_against_direct_render, render_skeleton
from arclens.prompts.encoders import GridEncoder
from arclens.prompts.expression import create_grid_encoder
from arclens.prompts.roles import Cells, token_roles
from arclens.prompts.templates import get_prompt_version

DEFAULT_ENCODER = "GridShapeEncoder(RowNumberEncoder(MinimalGridEncoder()))"
DEFAULT_PROMPT_VERSION = "output-from-examples-v1"
TOKENIZE_BATCH = 256  # prompts tokenized together (the fast tokenizer batches in Rust)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")


@dataclass(frozen=True)
class PromptConfig:
    version: str = DEFAULT_PROMPT_VERSION
    encoder: str = DEFAULT_ENCODER
    predictions_per_task: int = 8
    seed: int = 0
    augment: bool = True
    with_answer: bool = False

    @classmethod
    def from_args(cls, args) -> PromptConfig:
        """From the CLI's prompt options (cli.py `_add_prompt_options`)."""
        return cls(
            version=args.prompt_version,
            # canonical spelling, so that a resumed run with other spacing is the same setting
            encoder=create_grid_encoder(args.encoder).expression,
            predictions_per_task=args.predictions_per_task,
            seed=args.seed,
            augment=not args.no_augment,
            with_answer=args.with_answer,
        )

    def flags_changed(self, seed_flag: str = "--seed") -> list[str]:
        """The prompt options (cli.py `_add_prompt_options`) that set this config away from the
        defaults, as flags: for a command to refuse them where they would not apply."""
        default = PromptConfig()
        flags = {"version": "--prompt-version", "encoder": "--encoder", "predictions_per_task": "--predictions-per-task",
                 "seed": seed_flag, "augment": "--no-augment", "with_answer": "--with-answer"}
        return [flag for name, flag in flags.items() if getattr(self, name) != getattr(default, name)]

    def validate(self) -> None:
        get_prompt_version(self.version)
        create_grid_encoder(self.encoder)
        if self.augment and self.predictions_per_task < 1:
            raise UserError(
                f"--predictions-per-task: expected a positive number, got {self.predictions_per_task}"
            )

    def to_json(self) -> dict:
        return {
            "version": self.version,
            "encoder": self.encoder,
            "predictions_per_task": self.predictions_per_task,
            "seed": self.seed,
            "augment": self.augment,
            "with_answer": self.with_answer,
        }


@dataclass
class Sample:
    key: str
    task_id: str
    test_index: int
    aug_index: int
    augmentation: Augmentation
    text: str
    token_ids: np.ndarray  # int32 [n]
    grid: np.ndarray  # int16 [n], -1 for tokens that are not one cell of a grid (SPEC.md section 3)
    row: np.ndarray
    col: np.ndarray

    def to_json(self) -> dict:
        """The line `arclens prompts` writes."""
        return {
            "key": self.key,
            "task_id": self.task_id,
            "test_index": self.test_index,
            "augmentation": self.augmentation.to_json(),
            "text": self.text,
            "token_ids": self.token_ids.tolist(),
        }


def sample_key(task_id: str, test_index: int, aug_index: int) -> str:
    return f"{task_id}/{test_index}/{aug_index}"


def load_tokenizer(model: str):
    """The tokenizer of a local model directory or hub id; it must be a fast one (offsets)."""
    from transformers import AutoTokenizer

    local = Path(model)
    if local.is_dir() and not any((local / f).exists() for f in TOKENIZER_FILES):
        # transformers would build an empty tokenizer from config.json's model type instead
        raise UserError(
            f"--model {model}: no tokenizer files ({', '.join(TOKENIZER_FILES)}) in this directory"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model))
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"--model {model}: cannot load its tokenizer ({first})") from None
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(f"--model {model}: needs a fast (tokenizer.json) tokenizer for token offsets")
    return tokenizer


@dataclass
class _Pending:
    key: str
    task_id: str
    test_index: int
    aug_index: int
    augmentation: Augmentation
    text: str
    cells: Cells


def _grid_cells(encoder: GridEncoder, grid, number: int, offset: int) -> tuple[str, Cells]:
    h, w = len(grid), len(grid[0])
    spans = encoder.cell_spans(h, w)
    rows, cols = _rows_cols(h, w)
    cells = Cells(spans[:, 0] + offset, spans[:, 1] + offset, np.full(h * w, number, np.int16), rows, cols)
    return encoder.to_text(grid), cells


@functools.lru_cache(maxsize=1024)
def _rows_cols(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.divmod(np.arange(h * w), w)
    rows, cols = rows.astype(np.int16), cols.astype(np.int16)
    rows.setflags(write=False)
    cols.setflags(write=False)
    return rows, cols


def _task_arrays(task: Task) -> list[tuple[np.ndarray, ...]]:
    """Per test input: every grid of the task as an array, indexed by grid number (SPEC.md
    section 3: example i input = 2i, output = 2i+1, test input = 2n, test output = 2n+1)."""

    def arr(g):
        return None if g is None else np.asarray(g, dtype=np.int64)

    train = [a for e in task.train for a in (arr(e.input), arr(e.output))]
    return [tuple(train + [arr(t.input), arr(t.output)]) for t in task.test]


def _augmented_grids(arrays: tuple, aug: Augmentation, slots: tuple[int, ...]) -> dict[int, list | None]:
    """The grids a prompt shows, augmented: the train examples in aug.train_order, all transformed."""
    n = len(aug.train_order)
    out = {}
    for number in slots:
        source = number
        if number < 2 * n:  # shown example j is original example train_order[j]
            source = 2 * aug.train_order[number // 2] + number % 2
        a = arrays[source]
        out[number] = None if a is None else aug.apply_array(a).tolist()
    return out


def _assemble(skeleton: Skeleton, grids: dict, encoder: GridEncoder, task_id: str) -> tuple[str, Cells, dict]:
    pieces, cell_parts, grid_texts, offset = [], [], {}, 0
    for text, number in zip(skeleton.texts, skeleton.slots):
        pieces.append(text)
        offset += len(text)
        grid = grids[number]
        if grid is None:  # only an answer can be missing
            raise UserError(
                f"task {task_id}: --with-answer needs the test output, which this task does not have"
            )
        grid_text, cells = _grid_cells(encoder, grid, number, offset)
        pieces.append(grid_text)
        grid_texts[number] = grid_text
        cell_parts.append(cells)
        offset += len(grid_text)
    pieces.append(skeleton.texts[-1])
    return "".join(pieces), Cells.concatenate(cell_parts), grid_texts


def _tokenize(tokenizer, pending: list[_Pending]) -> Iterator[Sample]:
    # The Rust tokenizer behind the fast tokenizer, as `tokenizer(texts)` calls it, without the
    # Python wrapping of every offset; add_special_tokens=True is the default that arc24's vLLM
    # and trainer used. The tests check the ids against tokenizer(text).
    encodings = tokenizer.backend_tokenizer.encode_batch([p.text for p in pending], add_special_tokens=True)
    for p, enc in zip(pending, encodings):
        # fromiter over the flattened pairs is the cheapest way out of the list of tuples
        n = len(enc.ids)
        flat = itertools.chain.from_iterable(enc.offsets)
        offsets = np.fromiter(flat, dtype=np.int64, count=2 * n).reshape(n, 2)
        grid, row, col = token_roles(offsets, p.cells)
        yield Sample(
            p.key, p.task_id, p.test_index, p.aug_index, p.augmentation, p.text,
            np.asarray(enc.ids, dtype=np.int32), grid, row, col,
        )  # fmt: skip


def render_samples(
    tasks: Iterable[Task], tokenizer, config: PromptConfig = PromptConfig(), batch_size: int = TOKENIZE_BATCH
) -> Iterator[Sample]:
    """Every sample of every task, in order task, test index, augmentation index."""
    config.validate()
    version = get_prompt_version(config.version)
    encoder = create_grid_encoder(config.encoder)
    skeletons: dict[int, Skeleton] = {}  # by number of train examples
    pending: list[_Pending] = []
    for task in tasks:
        n = len(task.train)
        checked = n in skeletons
        if not checked:
            skeletons[n] = render_skeleton(tokenizer, version, n, config.with_answer)
        augmentations = plan_augmentations(
            task.task_id, n, config.predictions_per_task, config.seed, config.augment
        )
        skeleton = skeletons[n]
        for test_index, arrays in enumerate(_task_arrays(task)):
            for aug_index, aug in enumerate(augmentations):
                grids = _augmented_grids(arrays, aug, skeleton.slots)
                text, cells, grid_texts = _assemble(skeleton, grids, encoder, task.task_id)
                if not checked:  # once per skeleton: the assembly equals arc24's direct rendering
                    check_against_direct_render(tokenizer, version, skeleton, grid_texts, text)
                    checked = True
                key = sample_key(task.task_id, test_index, aug_index)
                pending.append(_Pending(key, task.task_id, test_index, aug_index, aug, text, cells))
                if len(pending) >= batch_size:
                    yield from _tokenize(tokenizer, pending)
                    pending = []
    if pending:
        yield from _tokenize(tokenizer, pending)
