"""Process start-up for multi-host runs, and the helpers every SPMD process needs.

Multi-host JAX is SPMD: every process runs the same program over the same global batch schedule,
feeds only its own slice of each batch, and gets back only the rows its devices hold. Nothing is
ever gathered to one process. The helpers here are the whole seam between that model and the
pipeline: where this process's rows are (``local_batch_rows``), building the global batch
(``global_batch``) and reading captures back (``local_rows``); agreement between the processes
(barriers, broadcasts, a shared claim) is distributed/coordination.py. (``metadata.json`` needs
no helper: ``store.writer.open_or_create_store`` creates it create-only, so whichever process wins
creates it and every other one compares its settings against the winner's.)

How a process learns its place, first match wins (also in docs/SCALING.md):

1. ``--coordinator HOST:PORT --num-processes N --process-id I`` (``ProcessSettings``)
2. ``ARCLENS_COORDINATOR`` / ``ARCLENS_NUM_PROCESSES`` / ``ARCLENS_PROCESS_ID``, or JAX's own
   ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` (arclens.deployment)
3. a Cloud TPU VM (libtpu installed and a TPU device node present): ``jax.distributed.initialize()``
   with no arguments, which reads the slice's topology from the TPU metadata
4. otherwise one process, no coordinator (``ARCLENS_NO_DISTRIBUTED=1`` forces this, e.g. to run
   each host of a pod slice as an independent worker)
"""

from __future__ import annotations

import glob
import importlib.util
import logging
from dataclasses import dataclass

import numpy as np

from arclens.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    process_id: int = 0
    num_processes: int = 1

    @property
    def is_leader(self) -> bool:
        return self.process_id == 0

    @property
    def multi_process(self) -> bool:
        return self.num_processes > 1


@dataclass(frozen=True)
class ProcessSettings:
    """Where this process sits in a multi-host job: the flags, or the deployment environment."""

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    no_distributed: bool = False  # never auto-detect a Cloud TPU slice
    init_timeout_s: int = 300

    @classmethod
    def from_flags(cls, coordinator: str | None, num_processes: int | None, process_id: int | None,
                   deployment=None) -> ProcessSettings:
        """``--coordinator/--num-processes/--process-id``, each defaulting to its deployment
        variable (arclens.deployment: ARCLENS_* or JAX's own JAX_*)."""
        if deployment is None:
            from arclens.deployment import read_deployment

            deployment = read_deployment()
        return cls(
            coordinator=coordinator or deployment.coordinator,
            num_processes=num_processes if num_processes is not None else deployment.num_processes,
            process_id=process_id if process_id is not None else deployment.process_id,
            no_distributed=deployment.no_distributed,
            init_timeout_s=deployment.init_timeout_s,
        )


def on_cloud_tpu_vm() -> bool:
    """libtpu is installed and this machine has a TPU device node (what jax.distributed's own
    TPU cluster detection will then confirm from the VM metadata)."""
    if importlib.util.find_spec("libtpu") is None:
        return False
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def initialize(process: ProcessSettings | None = None) -> Runtime:
    """Start ``jax.distributed`` when this run has more than one process; see module doc.

    Must run before anything touches a JAX device. Calling it again returns the same Runtime.
    ``process`` defaults to the deployment environment alone (``ProcessSettings.from_flags``).
    """
    import jax

    if jax.distributed.is_initialized():
        return Runtime(jax.process_index(), jax.process_count())
    p = process if process is not None else ProcessSettings.from_flags(None, None, None)
    explicit = [x is not None for x in (p.coordinator, p.num_processes, p.process_id)]
    if any(explicit):
        if not all(explicit):
            raise UserError(
                "--coordinator, --num-processes and --process-id go together (or ARCLENS_COORDINATOR, "
                "ARCLENS_NUM_PROCESSES, ARCLENS_PROCESS_ID); got only some of them"
            )
        if p.num_processes < 1 or not 0 <= p.process_id < p.num_processes:
            raise UserError(f"--process-id {p.process_id} must be in 0..{p.num_processes - 1} (--num-processes)")
        if ":" not in p.coordinator:
            raise UserError(f"--coordinator {p.coordinator!r}: expected HOST:PORT of process 0")
        if p.num_processes == 1:
            return Runtime(0, 1)
        log.info("jax.distributed: process %d of %d, coordinator %s", p.process_id, p.num_processes, p.coordinator)
        _initialize_or_explain(
            jax, coordinator_address=p.coordinator, num_processes=p.num_processes, process_id=p.process_id,
            initialization_timeout=p.init_timeout_s,
        )
    elif p.no_distributed or not on_cloud_tpu_vm():
        return Runtime(0, 1)
    else:
        log.info("jax.distributed: Cloud TPU VM detected; taking the slice topology from its metadata")
        _initialize_or_explain(jax, initialization_timeout=p.init_timeout_s)
    return Runtime(jax.process_index(), jax.process_count())


def _initialize_or_explain(jax, **kwargs) -> None:
    try:
        jax.distributed.initialize(**kwargs)
    except Exception as err:  # noqa: BLE001 - jax raises RuntimeError/ValueError/XlaRuntimeError here
        where = kwargs.get("coordinator_address", "auto-detected coordinator")
        raise UserError(f"jax.distributed.initialize ({where}) failed: {type(err).__name__}: {err}") from None


# ---------------------------------------------------------------------------------------------
# feeding batches and reading captures


def local_batch_rows(sharding, global_shape: tuple[int, ...]) -> slice:
    """The rows (leading axis) of a global array with ``sharding`` that this process must supply
    to ``jax.make_array_from_process_local_data``: the union of its devices' row ranges.

    With the data axis spanning processes (jax.make_mesh's device order) this is a contiguous
    ``global_rows / n_processes`` block; when ``data`` is smaller than the process count, several
    processes hold (and feed) the same rows.
    """
    n = global_shape[0]
    starts, stops = [], []
    for index in sharding.addressable_devices_indices_map(tuple(global_shape)).values():
        rows = index[0] if index else slice(None)
        start, stop, _ = rows.indices(n)
        starts.append(start)
        stops.append(stop)
    lo, hi = min(starts), max(stops)
    covered = np.zeros(hi - lo, bool)
    for s, e in zip(starts, stops):
        covered[s - lo:e - lo] = True
    if not covered.all():
        raise ValueError(f"this process's rows of {sharding} are not contiguous; use a mesh from make_mesh")
    return slice(lo, hi)


def global_batch(local_data: np.ndarray, sharding, global_shape: tuple[int, ...]):
    """The global jax.Array built from this process's rows ``local_data`` (see local_batch_rows)."""
    import jax

    return jax.make_array_from_process_local_data(sharding, local_data, tuple(global_shape))


def local_rows(global_array) -> list[tuple[slice, np.ndarray]]:
    """This process's share of a batch-sharded result, as ``[(global row slice, host array)]``.

    Exactly one process in the whole job returns each row: the one holding replica 0 of it, so with
    ``model > 1`` the model-axis copies are not written twice, and nothing is gathered to one host.
    The arrays are copied to host memory shard by shard. Other axes must not be split across
    devices (give the jitted function ``out_shardings`` sharded over the batch only).
    """
    n = global_array.shape[0]
    pieces: dict[tuple[int, int], list] = {}
    for shard in global_array.addressable_shards:
        if shard.replica_id != 0:
            continue
        rows = shard.index[0] if shard.index else slice(None)
        start, stop, _ = rows.indices(n)
        pieces.setdefault((start, stop), []).append(shard)
    out = []
    for (start, stop), shards in sorted(pieces.items()):
        if len(shards) != 1 or any(
            (s.indices(d) != (0, d, 1)) for s, d in zip(shards[0].index[1:], global_array.shape[1:])
        ):
            raise ValueError(
                f"local_rows: array {global_array.shape} with {global_array.sharding} is split along a "
                "non-batch axis; jit the capture with out_shardings sharded over the batch only"
            )
        out.append((slice(start, stop), np.asarray(shards[0].data)))
    return _merge_contiguous(out)


def _merge_contiguous(parts: list[tuple[slice, np.ndarray]]) -> list[tuple[slice, np.ndarray]]:
    merged: list[tuple[slice, np.ndarray]] = []
    for rows, data in parts:
        if merged and merged[-1][0].stop == rows.start:
            prev_rows, prev = merged[-1]
            merged[-1] = (slice(prev_rows.start, rows.stop), np.concatenate([prev, data]))
        else:
            merged.append((rows, data))
    return merged


def barrier(name: str, runtime: Runtime | None = None) -> None:
    """Block until every process reaches ``barrier(name)`` (a device-level sync, for code whose
    collectives it orders: the SAE trainer's checkpoints); free with one process. Agreement that
    must not wait for the device queue goes through distributed/coordination.py instead."""
    import jax

    if (runtime.num_processes if runtime else jax.process_count()) > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
