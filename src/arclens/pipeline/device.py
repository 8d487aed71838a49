"""The device side of extraction: one jitted capture function, compiled once per batch shape.

- Every shape of a schedule is compiled ahead of time in a small thread pool (XLA compiles
  without the GIL), so the compiles overlap each other, prompt rendering and earlier batches.
- ``dispatch`` never waits for the device: it builds the global batch, launches the compiled
  executable (asynchronous dispatch) and starts the device-to-host copies of its captures.
  Reading them (``fetch``) is the copy stage's job, in another thread.
- Nothing is donated: the only inputs are int32 tokens and lengths, which no output can alias
  (XLA would only warn that the donation was unusable); the parameters must survive the call.
  The token buffers are freed as soon as the dispatch loop drops them.
- ``--positions last`` gathers each row's last real token on the device, so only ``[B, 1, D]``
  per hook crosses to the host.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np

from arclens.distributed.runtime import global_batch, local_batch_rows, local_rows
from arclens.distributed.sharding import logical_sharding
from arclens.errors import UserError
from arclens.model.config import QwenConfig
from arclens.model.hooks import Hook
from arclens.model.qwen import forward

COMPILE_THREADS = 4

# Where the jitted capture function leaves its outputs. "device" (default): on the accelerator,
# then copied to numpy by the copy stage. "pinned_host": XLA writes them straight into pinned host
# memory as part of the program (a DMA it schedules itself), so the copy stage only reads host
# memory. Opt-in until measured on a GPU (docs/BENCHMARKS.md: the device-to-host copy is the
# suspected limit there); a backend that cannot compile it falls back to "device", logged once.
CAPTURE_MEMORY_ENV = "ARCLENS_CAPTURE_MEMORY"
CAPTURE_MEMORY_KINDS = ("device", "pinned_host")
log = logging.getLogger(__name__)


def capture_memory_kind() -> str:
    kind = os.environ.get(CAPTURE_MEMORY_ENV, "") or "device"
    if kind not in CAPTURE_MEMORY_KINDS:
        raise UserError(f"{CAPTURE_MEMORY_ENV}={kind!r}: expected one of {', '.join(CAPTURE_MEMORY_KINDS)}")
    return kind


class CaptureRunner:
    def __init__(self, params, config: QwenConfig, hooks: tuple[Hook, ...], positions: str, store_dtype, mesh,
                 attn_impl: str = "auto"):
        self.params = params
        self.config = config
        self.hooks = hooks
        self.positions = positions
        self.mesh = mesh
        self.store_dtype = jnp.dtype(store_dtype)

        def capture(params, tokens, lengths):
            out = forward(params, config, tokens, lengths, hooks=hooks, logits=False, attn_impl=attn_impl)
            if positions == "last":
                last = jnp.maximum(lengths - 1, 0)[:, None, None]
                out = {k: jnp.take_along_axis(v, last, axis=1) for k, v in out.items()}
            return {k: v.astype(self.store_dtype) for k, v in out.items()}

        self._capture = capture
        self.memory_kind = capture_memory_kind()
        self._jitted = jax.jit(capture, out_shardings=self._out_sharding)
        self._compiled: dict[tuple[int, int], Future] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(COMPILE_THREADS, thread_name_prefix="arclens-compile")
        self.compile_seconds = 0.0  # summed over shapes (they overlap, so this can exceed wall time)
        self.compile_wait_seconds = 0.0  # how long dispatch actually waited for a compile

    # -- shardings -------------------------------------------------------------------------

    def data_parallel(self) -> int:
        return int(self.mesh.shape["data"])

    def _in_shardings(self, shape: tuple[int, int]):
        b, t = shape
        return (logical_sharding(self.mesh, ("batch", None), (b, t)), logical_sharding(self.mesh, ("batch",), (b,)))

    @property
    def _out_sharding(self):
        # Sharded over the batch only, so each process reads back whole rows (local_rows).
        kind = None if self.memory_kind == "device" else self.memory_kind
        return jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec("data", None, None),
                                          memory_kind=kind)

    def local_rows(self, shape: tuple[int, int]) -> slice:
        """The rows of a global batch of ``shape`` that this process feeds."""
        return local_batch_rows(self._in_shardings(shape)[0], shape)

    # -- compiling -------------------------------------------------------------------------

    def precompile(self, shapes) -> None:
        # Longest first: the schedule dispatches its batches longest first, so the first batch's
        # executable is the first one ready.
        for shape in sorted(shapes, key=lambda s: (-s[1], -s[0])):
            self._executable_future(shape)

    def compile_now(self, shapes) -> float:
        """Compile ``shapes`` (in parallel) and wait; returns the wall seconds (for benchmarks)."""
        t0 = time.perf_counter()
        self.precompile(shapes)
        for shape in shapes:
            self._executable_future(shape).result()
        return time.perf_counter() - t0

    def _executable_future(self, shape: tuple[int, int]) -> Future:
        with self._lock:
            fut = self._compiled.get(shape)
            if fut is None:
                fut = self._pool.submit(self._compile, shape)
                self._compiled[shape] = fut
            return fut

    def _compile(self, shape: tuple[int, int]):
        tok_sh, len_sh = self._in_shardings(shape)
        t0 = time.perf_counter()
        args = (self.params, jax.ShapeDtypeStruct(shape, jnp.int32, sharding=tok_sh),
                jax.ShapeDtypeStruct((shape[0],), jnp.int32, sharding=len_sh))
        try:
            compiled = self._jitted.lower(*args).compile()
        except Exception as err:
            if self.memory_kind == "device":
                raise
            with self._lock:
                if self.memory_kind != "device":
                    log.warning("%s=%s does not compile on this backend (%s); captures stay in device "
                                "memory", CAPTURE_MEMORY_ENV, self.memory_kind, str(err).splitlines()[0][:200])
                    self.memory_kind = "device"
                    self._jitted = jax.jit(self._capture, out_shardings=self._out_sharding)
            compiled = self._jitted.lower(*args).compile()
        with self._lock:
            self.compile_seconds += time.perf_counter() - t0
        return compiled

    @property
    def shapes_compiled(self) -> int:
        return len(self._compiled)

    # -- running ---------------------------------------------------------------------------

    def dispatch(self, tokens_local: np.ndarray, lengths_local: np.ndarray, shape: tuple[int, int]) -> dict:
        """Launch one batch (this process's rows of it); returns the captures, still on device."""
        fut = self._executable_future(shape)
        if not fut.done():
            t0 = time.perf_counter()
            fut.result()
            self.compile_wait_seconds += time.perf_counter() - t0
        executable = fut.result()
        tok_sh, len_sh = self._in_shardings(shape)
        tokens = global_batch(tokens_local, tok_sh, shape)
        lengths = global_batch(lengths_local, len_sh, (shape[0],))
        out = executable(self.params, tokens, lengths)
        if self.memory_kind == "device":
            for arr in out.values():
                arr.copy_to_host_async()  # overlaps the transfer with the next batch's compute
        return out

    @staticmethod
    def fetch(out: dict) -> dict[str, list[tuple[slice, np.ndarray]]]:
        """Block until a batch's captures are on the host: ``{hook: [(global rows, array)]}``."""
        return {name: local_rows(arr) for name, arr in out.items()}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
