"""The device side of extraction: one jitted capture function, compiled once per batch shape.

- Every shape of a schedule is compiled ahead of time in a small thread pool (XLA compiles
  without the GIL), so the compiles overlap each other, prompt rendering and earlier batches.
- ``dispatch`` never waits for the device: it builds the global batch, launches the compiled
  executable (asynchronous dispatch) and, for a run into a store, starts the device-to-host
  copies of its captures. Reading them (``fetch``) is the copy stage's job, in another thread.
- Besides the captures the function returns ``valid`` (bool ``[B, T]``: real tokens of real
  rows), so a consumer on the device needs nothing from the host to mask padding.
- Nothing is donated: the only inputs are int32 tokens and lengths, which no output can alias
  (XLA would only warn that the donation was unusable); the parameters must survive the call.
  The token buffers are freed as soon as the dispatch loop drops them.
- ``--positions last`` gathers each row's last real token on the device, so only ``[B, 1, D]``
  per hook crosses to the host.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from arclens.distributed.runtime import global_batch, local_batch_rows, local_rows
from arclens.distributed.sharding import logical_sharding
from arclens.model.config import QwenConfig
from arclens.model.hooks import Hook
from arclens.model.qwen import forward

COMPILE_THREADS = 4

log = logging.getLogger(__name__)


@dataclass
class Dispatched:
    """One launched batch, still on the device (global arrays, sharded over the data axis)."""

    captures: dict[str, jax.Array]  # hook -> [B, T, D] (``positions="last"``: [B, 1, D]), capture dtype
    valid: jax.Array  # bool [B, T] (or [B, 1]): real tokens of real rows
    lengths: jax.Array  # int32 [B]; 0 for padding rows


class CaptureRunner:
    """The jitted capture function of one job.

    ``memory_kind`` says where ``run``'s captures are left: ``"device"`` (default), then copied to
    numpy by the copy stage, or ``"pinned_host"``: XLA writes them straight into pinned host memory
    as part of the program (a DMA it schedules itself), so the copy stage only reads host memory.
    Opt-in until measured on a GPU (docs/BENCHMARKS.md); a backend that cannot compile it falls
    back to ``"device"``, logged once. Device batches (``ExtractJob.device_batches``) always stay on
    the device.
    """

    def __init__(self, params, config: QwenConfig, hooks: tuple[Hook, ...], positions: str, store_dtype, mesh,
                 attn_impl: str = "auto", memory_kind: str = "device"):
        self.params = params
        self.config = config
        self.hooks = hooks
        self.positions = positions
        self.mesh = mesh
        self.store_dtype = jnp.dtype(store_dtype)

        def capture(params, tokens, lengths):
            # Padding rows come with length 0 (so that ``valid`` is all False there) and run as
            # one-token rows: an all-masked softmax row would be NaN.
            out = forward(params, config, tokens, jnp.maximum(lengths, 1), hooks=hooks, logits=False,
                          attn_impl=attn_impl)
            valid = jnp.arange(tokens.shape[1])[None, :] < lengths[:, None]
            if positions == "last":
                last = jnp.maximum(lengths - 1, 0)[:, None, None]
                out = {k: jnp.take_along_axis(v, last, axis=1) for k, v in out.items()}
                valid = (lengths > 0)[:, None]
            return {k: v.astype(self.store_dtype) for k, v in out.items()}, valid

        self._capture = capture
        self.memory_kind = memory_kind
        self._jitted: dict[str, object] = {}
        self._compiled: dict[tuple[tuple[int, int], str], Future] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(COMPILE_THREADS, thread_name_prefix="arclens-compile")
        self.compile_seconds = 0.0  # summed over shapes (they overlap, so this can exceed wall time)
        self.compile_wait_seconds = 0.0  # how long dispatch actually waited for a compile
        self.dispatches = 0  # batches launched

    # -- shardings -------------------------------------------------------------------------

    def data_parallel(self) -> int:
        return int(self.mesh.shape["data"])

    def _in_shardings(self, shape: tuple[int, int]):
        b, t = shape
        return (logical_sharding(self.mesh, ("batch", None), (b, t)), logical_sharding(self.mesh, ("batch",), (b,)))

    def _jit(self, kind: str):
        if kind not in self._jitted:
            # Sharded over the batch only, so each process reads back whole rows (local_rows).
            memory = None if kind == "device" else kind
            rows3 = NamedSharding(self.mesh, PartitionSpec("data", None, None), memory_kind=memory)
            rows2 = NamedSharding(self.mesh, PartitionSpec("data", None))
            self._jitted[kind] = jax.jit(self._capture, out_shardings=(rows3, rows2))
        return self._jitted[kind]

    def local_rows(self, shape: tuple[int, int]) -> slice:
        """The rows of a global batch of ``shape`` that this process feeds."""
        return local_batch_rows(self._in_shardings(shape)[0], shape)

    # -- compiling -------------------------------------------------------------------------

    def precompile(self, shapes, kind: str | None = None) -> None:
        # Longest first: the schedule dispatches its batches longest first, so the first batch's
        # executable is the first one ready.
        for shape in sorted(shapes, key=lambda s: (-s[1], -s[0])):
            self._executable_future(shape, kind or self.memory_kind)

    def compile_now(self, shapes) -> float:
        """Compile ``shapes`` (in parallel) and wait; returns the wall seconds (for benchmarks)."""
        t0 = time.perf_counter()
        self.precompile(shapes)
        for shape in shapes:
            self._executable_future(shape, self.memory_kind).result()
        return time.perf_counter() - t0

    def compiling(self) -> int:
        """Shapes whose compile has not finished yet (the progress line says so instead of an ETA)."""
        with self._lock:
            return sum(not f.done() for f in self._compiled.values())

    def _executable_future(self, shape: tuple[int, int], kind: str) -> Future:
        with self._lock:
            if kind != "device" and self.memory_kind == "device":
                kind = "device"  # pinned_host was refused by this backend (see _compile)
            fut = self._compiled.get((shape, kind))
            if fut is None:
                fut = self._pool.submit(self._compile, shape, kind)
                self._compiled[(shape, kind)] = fut
            return fut

    def _compile(self, shape: tuple[int, int], kind: str):
        tok_sh, len_sh = self._in_shardings(shape)
        t0 = time.perf_counter()
        args = (self.params, jax.ShapeDtypeStruct(shape, jnp.int32, sharding=tok_sh),
                jax.ShapeDtypeStruct((shape[0],), jnp.int32, sharding=len_sh))
        try:
            compiled = self._jit(kind).lower(*args).compile()
        except Exception as err:
            if kind == "device":
                raise
            with self._lock:
                if self.memory_kind != "device":
                    log.warning("--capture-memory %s does not compile on this backend (%s); captures stay in "
                                "device memory", kind, str(err).splitlines()[0][:200])
                    self.memory_kind = "device"
            compiled = self._jit("device").lower(*args).compile()
        with self._lock:
            self.compile_seconds += time.perf_counter() - t0
        return compiled

    # -- running ---------------------------------------------------------------------------

    def dispatch(self, tokens_local: np.ndarray, lengths_local: np.ndarray, shape: tuple[int, int], *,
                 to_host: bool = True) -> Dispatched:
        """Launch one batch (this process's rows of it); nothing waits for the device.

        ``to_host``: the captures are on their way to the host (``memory_kind``, and a started
        device-to-host copy); otherwise they stay in device memory for a consumer on the device."""
        kind = self.memory_kind if to_host else "device"
        fut = self._executable_future(shape, kind)
        if not fut.done():
            t0 = time.perf_counter()
            fut.result()
            self.compile_wait_seconds += time.perf_counter() - t0
        executable = fut.result()
        tok_sh, len_sh = self._in_shardings(shape)
        tokens = global_batch(tokens_local, tok_sh, shape)
        lengths = global_batch(lengths_local, len_sh, (shape[0],))
        captures, valid = executable(self.params, tokens, lengths)
        self.dispatches += 1
        if to_host and self.memory_kind == "device":
            for arr in captures.values():
                arr.copy_to_host_async()  # overlaps the transfer with the next batch's compute
        return Dispatched(captures, valid, lengths)

    @staticmethod
    def fetch(out: Dispatched) -> dict[str, list[tuple[slice, np.ndarray]]]:
        """Block until a batch's captures are on the host: ``{hook: [(global rows, array)]}``."""
        return {name: local_rows(arr) for name, arr in out.captures.items()}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
