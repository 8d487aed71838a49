"""Typed settings of the extract job: what the command line's flags become at its entry.

argparse's namespace stops at each command's entry function (``extract.main``); everything below
it takes these dataclasses. Library callers (SAE training from the model, feature statistics)
build them directly, usually through ``CaptureSettings.load``, which resolves and checks a model
the way ``arclens extract`` does.

- ``CaptureSettings``: what the forward pass captures and how batches are formed. Enough for
  ``ExtractJob.device_batches``: no store is involved.
- ``StoreSettings``: where ``ExtractJob.run`` writes, and how.
- ``WorkerSettings``: an independent worker of a fleet sharing the store (pipeline/workers.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from arclens.distributed.claims import DEFAULT_TTL_S as DEFAULT_CLAIM_TTL_S
from arclens.errors import UserError
from arclens.model.config import QwenConfig
from arclens.model.hooks import Hook, parse_hooks
from arclens.pipeline.batching import DEFAULT_MAX_SHAPES
from arclens.prompts import PromptConfig
from arclens.store.writer import DEFAULT_PUBLISH_THREADS

POSITIONS = ("all", "last")
DTYPES = ("bfloat16", "float32")
CAPTURE_MEMORY_KINDS = ("device", "pinned_host")
DEFAULT_WINDOW_SAMPLES = 16384  # samples per window of whole tasks: the unit of scheduling
DEFAULT_SHARD_BYTES = 1 << 30
DEFAULT_TASKS_PER_UNIT = 16


@dataclass(frozen=True)
class CaptureSettings:
    """What to capture and how batches are formed (docs/EXTRACT.md sections 4 and 5)."""

    model: str  # as the user named it (hub id or path): the store's ``model.name``
    model_path: Path  # the resolved local checkpoint directory
    config: QwenConfig
    hooks: tuple[Hook, ...]
    positions: str = "all"  # "all" prompt positions, or only the "last" one
    dtype: str = "bfloat16"  # compute dtype and the dtype of the captures
    prompt: PromptConfig = field(default_factory=PromptConfig)
    mesh: str | None = None  # "DATA,MODEL"; None: all-data
    tokens_per_batch: int | None = None  # per device; None: the backend's default (job.py)
    max_shapes: int = DEFAULT_MAX_SHAPES
    capture_memory: str = "device"  # where `run`'s captures land: "device" or "pinned_host"
    render_workers: int | None = None  # prompt-rendering processes; None: chosen by the job size
    window_samples: int = DEFAULT_WINDOW_SAMPLES
    model_fingerprint: str | None = None  # model/fingerprint.py; None only for hand-made settings

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """UserError naming the flag for any value out of range (the model is checked by ``load``)."""
        if not self.hooks:
            raise UserError("--hooks: name at least one capture point")
        for hook in self.hooks:
            if not 0 <= hook.layer < self.config.n_layers:
                raise UserError(f"--hooks: {hook.name} names layer {hook.layer}, but the model has layers "
                                f"0..{self.config.n_layers - 1}")
        if self.positions not in POSITIONS:
            raise UserError(f"--positions: expected one of {', '.join(POSITIONS)}, got {self.positions!r}")
        if self.dtype not in DTYPES:
            raise UserError(f"--dtype: expected one of {', '.join(DTYPES)}, got {self.dtype!r}")
        _positive("--tokens-per-batch", self.tokens_per_batch, allow_none=True)
        _positive("--max-shapes", self.max_shapes)
        _positive("window_samples", self.window_samples)
        if self.capture_memory not in CAPTURE_MEMORY_KINDS:
            raise UserError(f"--capture-memory: expected one of {', '.join(CAPTURE_MEMORY_KINDS)}, "
                            f"got {self.capture_memory!r}")
        if self.render_workers is not None and (not isinstance(self.render_workers, int) or self.render_workers < 0):
            raise UserError(f"--render-workers: expected 0 or more processes, got {self.render_workers!r}")

    @classmethod
    def load(cls, model: str, hooks: Sequence[str | Hook], *, prompt: PromptConfig | None = None,
             **options) -> CaptureSettings:
        """Resolve ``model`` (a local directory or a hub id), read its config, check the hooks
        against its layers and fingerprint it, as ``arclens extract`` does. ``options`` are the
        other fields (``positions``, ``dtype``, ``mesh``, ``tokens_per_batch``, ...)."""
        from arclens.model.fingerprint import model_fingerprint
        from arclens.model.loading import resolve_model

        path = resolve_model(model)
        config = QwenConfig.from_pretrained(path)
        names = [h.name if isinstance(h, Hook) else str(h) for h in hooks]
        prompt = prompt or PromptConfig()
        prompt.validate()
        return cls(model=str(model), model_path=Path(path), config=config, hooks=parse_hooks(names, config.n_layers),
                   prompt=prompt, model_fingerprint=model_fingerprint(path), **options)


@dataclass(frozen=True)
class StoreSettings:
    """Where and how ``ExtractJob.run`` writes its activation store (SPEC.md section 3)."""

    dest: str  # local path or fsspec URL
    shard_bytes: int = DEFAULT_SHARD_BYTES
    writer: str | None = None  # shard name prefix; None: store.format.writer_name for this process
    publish_threads: int = DEFAULT_PUBLISH_THREADS  # shards published at once in the background; 0 = inline
    tasks_source: str = ""  # how the tasks were named (``--tasks``): the store's ``tasks.source``

    def __post_init__(self) -> None:
        _positive("--shard-mb", self.shard_bytes)
        if not isinstance(self.publish_threads, int) or self.publish_threads < 0:
            raise UserError(f"--publish-threads: expected 0 (inline) or more, got {self.publish_threads!r}")
        if self.writer is not None:
            from arclens.store.format import check_writer_name

            try:
                check_writer_name(self.writer)
            except ValueError as err:
                raise UserError(f"--writer: {err}") from None


@dataclass(frozen=True)
class WorkerSettings:
    """One independent worker of a fleet that shares the store (docs/SCALING.md section 4)."""

    num_workers: int
    worker_id: int | None = None  # only where the worker starts looking; None: a random start
    tasks_per_unit: int | None = None  # None: the store's recorded plan, else DEFAULT_TASKS_PER_UNIT
    claim_ttl_s: float = DEFAULT_CLAIM_TTL_S
    idle_exit_s: float | None = None  # leave after this long with nothing to claim; None: never

    def __post_init__(self) -> None:
        if not isinstance(self.num_workers, int) or self.num_workers < 1:
            raise UserError(f"--num-workers: expected at least 1, got {self.num_workers!r}")
        if self.worker_id is not None and not 0 <= self.worker_id < self.num_workers:
            raise UserError(f"--worker-id {self.worker_id} must be in 0..{self.num_workers - 1} "
                            f"(--num-workers {self.num_workers})")
        _positive("--tasks-per-unit", self.tasks_per_unit, allow_none=True)
        if not self.claim_ttl_s > 0:
            raise UserError(f"--claim-ttl: expected a positive number of seconds, got {self.claim_ttl_s!r}")
        if self.idle_exit_s is not None and not self.idle_exit_s >= 0:
            raise UserError(f"--idle-exit: expected 0 or more seconds, got {self.idle_exit_s!r}")


@dataclass(frozen=True)
class ExtractSettings:
    """Everything one ``arclens extract`` runs with; ``store`` is None for device batches only."""

    capture: CaptureSettings
    store: StoreSettings | None = None
    worker: WorkerSettings | None = None


def _positive(flag: str, value, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise UserError(f"{flag}: expected a positive number, got {value!r}")
