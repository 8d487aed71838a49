"""Device replicas for `arclens infer`: one parameter copy and one worker thread per local device.

What is replicated is any pytree: the model's weights, and with ``--splice/--ablate/--steer`` the
edits' params too (an SAE's arrays), so every array a worker's jitted calls read is on its device.

Data parallelism over the local devices of one process (``--devices N``, default all). Batches
are formed per window exactly as one ``generate()`` call over the window forms them, so every
batch is the same computation whatever the number of devices; the run writes whole windows in
order, so the files are identical for any ``--devices``.
"""

from __future__ import annotations

import queue
import sys
import threading


class DeviceReplicas:
    """One worker thread per device, each with its own replica of ``state`` (a pytree: the weights,
    or ``(weights, edits)``), pulling ``(window, batch, *args)`` jobs from a shared queue, calling
    ``run(replica, *args)`` and putting ``(device index, job, *its result)`` on the results queue
    (or the exception that stopped it).

    A worker runs ``generate()`` under ``jax.default_device(its device)``: the numpy inputs and the
    small arrays generate() makes (EOS ids, fence tables, tokens, lengths, compaction indices) are
    created there, next to the replica, so every jitted call (``_start``, ``_decode_chunk``,
    ``_gather_rows``) runs on that device with nothing to move. Implicit transfers
    between devices are disallowed there (``jax.transfer_guard_device_to_device``): a stray array
    on another device is a placement bug and fails loudly instead of copying at every step. XLA
    releases the GIL while it runs, so the devices work at once."""

    def __init__(self, state, devices, run):
        self.devices = list(devices)
        self.jobs: queue.Queue = queue.Queue()
        self.results: queue.Queue = queue.Queue()
        self._run = run
        self._threads = [
            threading.Thread(target=self._work, args=(k, d, state), name=f"arclens-infer-{d}", daemon=True)
            for k, d in enumerate(self.devices)
        ]
        for t in self._threads:
            t.start()

    def _work(self, k, device, state) -> None:
        import jax

        try:
            # An explicit copy (a no-op on the device the arrays were loaded to), made before the
            # guard: inside it only arrays already on this device may be used.
            replica = jax.device_put(state, device)
            while (job := self.jobs.get()) is not None:
                with jax.default_device(device), jax.transfer_guard_device_to_device("disallow"):
                    out = self._run(replica, *job[2:])
                self.results.put((k, job, *out))
        except BaseException as e:  # noqa: BLE001 - handed to the main thread, which raises it
            self.results.put((k, None, e, None))

    def submit(self, window: int, batch: int, *args) -> None:
        self.jobs.put((window, batch, *args))

    def result(self):
        """The next finished job: ``(device index, (window, batch), generations, stats)``."""
        while True:
            try:  # a timeout keeps the wait interruptible (Ctrl-C) everywhere
                k, job, out, stats = self.results.get(timeout=0.5)
            except queue.Empty:
                continue
            if job is None:
                raise out
            return k, job[:2], out, stats

    def close(self) -> None:
        """Drop the jobs not started, and wait for the running ones (a batch each) to end."""
        try:
            while True:
                self.jobs.get_nowait()
        except queue.Empty:
            pass
        for _ in self._threads:
            self.jobs.put(None)
        busy = [t for t in self._threads if t.is_alive()]
        if busy and sys.exc_info()[0] is not None:  # stopping on an error or Ctrl-C: say why we wait
            print(f"arclens infer: stopping; waiting for the batches running on {len(busy)} device(s) to end",
                  file=sys.stderr, flush=True)
        for t in self._threads:
            t.join()
