"""The extract job's stages: render and assemble -> dispatch -> (copy to host -> write).

Each stage is a thread joined to the next by a bounded queue (overlap.py; design in
docs/EXTRACT.md section 5):

    producer thread           caller's thread           copy thread          writer thread
    render window w+1         gate, dispatch batch i    read back batch i-1  slice + add batch i-2
    schedule, assemble        (async, no host sync)     (blocks on device)   commit shards as they fill

``to_store`` runs all four (``ExtractJob.run``). ``on_device`` runs the first two and hands each
dispatched batch to the caller (``ExtractJob.device_batches``): the captures never leave the device.

Before every batch the dispatch loop asks ``gate()`` whether to go on: the job's one stop request
(SIGTERM, or jax's preemption sync point in a multi-process run) and, for a worker, its claim.
Every process of an SPMD job asks at the same batches, so they all stop at the same one.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

from arclens.crashpoints import crash_point
from arclens.pipeline.overlap import Aborted, DeviceClock, Stages
from arclens.pipeline.schedule import ScheduledBatch
from arclens.pipeline.writing import BatchWork, assemble, write_batch
from arclens.store.writer import CommitRefused

PREFETCH_BATCHES = 4  # assembled batches waiting for the device
IN_FLIGHT_BATCHES = 2  # dispatched, not yet read back: bounds device memory for captures
WRITE_QUEUE_BATCHES = 6  # on the host, waiting for the writer: absorbs a slow shard upload


def _oom(err: BaseException, shape: tuple[int, int], tokens_per_batch: int) -> BaseException:
    from arclens.errors import device_out_of_memory

    b, t = shape
    return device_out_of_memory(
        err, f"a batch of {b} x {t} tokens",
        f"lower --tokens-per-batch (this run: {tokens_per_batch} for the whole mesh), or shard the model "
        "over more devices with --mesh DATA,MODEL")


Scheduled = Callable[[Callable], Iterator[ScheduledBatch]]  # on_plan -> the batches (schedule.scheduled_batches)


def _producer(stages: Stages, channel, scheduled: Scheduled, runner, *, committed: frozenset[str], start: int,
              to_host: bool, stop: threading.Event, summary=None) -> Callable[[], None]:
    """The producer stage: skips what needs no computing, assembles the rest for the device, and
    stops early once ``stop`` is set (the dispatch loop stopped taking batches)."""

    def precompile(schedule, samples) -> None:
        shapes = {b.shape for b in schedule.batches
                  if not all(samples[i].key in committed for i in b.rows)}
        runner.precompile(shapes, None if to_host else "device")
        if summary is not None:
            summary.shapes |= shapes

    def produce() -> None:
        for item in scheduled(precompile):
            if stop.is_set():
                break
            if item.index < start:
                continue  # a resumed consumer's earlier batches: never assembled nor computed
            keys = item.keys
            done = committed.intersection(keys)
            if len(done) == len(keys):
                continue  # every sample committed: nothing to compute
            with stages.busy.measure("tokenize"):
                work = assemble(item.batch, item.index, item.samples, runner.local_rows(item.batch.shape),
                                frozenset(done))
            if summary is not None:
                summary.padded_tokens += item.batch.batch_size * item.batch.seq_len
            channel.put(work)
        channel.close()

    return produce


def _dispatch(runner, work: BatchWork, tokens_per_batch: int, to_host: bool):
    try:
        out = runner.dispatch(work.tokens, work.lengths, work.batch.shape, to_host=to_host)
    except Exception as err:  # re-raised, as DeviceOutOfMemory if it is one
        raise _oom(err, work.batch.shape, tokens_per_batch) from err
    work.tokens = work.lengths = None
    work.dispatched_at = time.perf_counter()
    crash_point("batch-dispatched")
    return out


def to_store(runner, scheduled: Scheduled, writer, *, positions: str, committed: frozenset[str], gate: Callable[[], bool],
             reporter, summary, tokens_per_batch: int) -> None:
    """Compute every batch of ``scheduled`` that holds an uncommitted sample and write those
    samples; stops between batches when ``gate()`` says so, committing what was dispatched. A
    commit the writer's guard refuses sets ``summary.lease_lost`` and commits nothing more."""
    stages = Stages()
    busy = stages.busy
    to_device = stages.channel(PREFETCH_BATCHES)
    to_host = stages.channel(IN_FLIGHT_BATCHES)
    to_writer = stages.channel(WRITE_QUEUE_BATCHES)
    clock = DeviceClock()
    stop_producing = threading.Event()
    compile_wait_before = runner.compile_wait_seconds

    def dispatch() -> None:
        for work in to_device:
            if gate():
                stop_producing.set()
                for _ in to_device:  # lets the producer see the flag and finish
                    pass
                break
            with busy.measure("dispatch"):
                out = _dispatch(runner, work, tokens_per_batch, to_host=True)
            to_host.put((work, out))
            summary.batches += 1
        to_host.close()

    def copy_to_host() -> None:
        for work, out in to_host:
            try:
                host = runner.fetch(out)
            except Exception as err:  # an execution error surfaces here, asynchronously
                raise _oom(err, work.batch.shape, tokens_per_batch) from err
            clock.completed(work.dispatched_at, time.perf_counter())
            to_writer.put((work, host))
        to_writer.close()

    def refused() -> None:
        # The claim is lost (StoreWriter's commit guard): nothing more is committed; the dispatch
        # loop keeps following the gate (every process must stop at the same batch) and the rest
        # of the batches drain unwritten.
        summary.lease_lost = True
        writer.abandon()

    def write() -> None:
        for work, host in to_writer:
            if summary.lease_lost:
                continue
            try:
                with busy.measure("write"):
                    n, stored = write_batch(writer, work, host, positions)
            except CommitRefused:
                refused()
                continue
            summary.samples += n
            summary.tokens_stored += stored
            summary.prompt_tokens += work.real_tokens
            reporter.advance(n, work.real_tokens)
        if not summary.lease_lost:
            try:
                with busy.measure("write"):
                    writer.flush()
            except CommitRefused:
                refused()

    stages.start("produce", _producer(stages, to_device, scheduled, runner, committed=committed, start=0,
                                      to_host=True, stop=stop_producing, summary=summary))
    stages.start("copy", copy_to_host)
    stages.start("write", write)
    stages.run_here(dispatch)
    stages.join()
    for stage, seconds in (("tokenize", busy.seconds.get("tokenize", 0.0)), ("device", clock.seconds),
                           ("write", busy.seconds.get("write", 0.0)),
                           ("compile wait", runner.compile_wait_seconds - compile_wait_before)):
        summary.time_split[stage] = summary.time_split.get(stage, 0.0) + seconds


def on_device(runner, scheduled: Scheduled, *, start: int, gate: Callable[[], bool], tokens_per_batch: int,
              ahead: int = 1) -> Iterator[tuple[BatchWork, object]]:
    """``(work, dispatched)`` for every batch of ``scheduled`` from position ``start`` on, the
    captures left on the device. ``ahead`` batches are dispatched before the previous one is
    handed over, so the device computes the next batch while the caller uses this one (the
    caller may keep it: nothing is donated or reused). Ends between batches when ``gate()``
    says so; closing the iterator stops the producer."""
    stages = Stages()
    to_device = stages.channel(PREFETCH_BATCHES)
    stages.start("produce", _producer(stages, to_device, scheduled, runner, committed=frozenset(), start=start,
                                      to_host=False, stop=threading.Event()))
    launched: deque = deque()
    try:
        for work in to_device:
            if gate():
                launched.clear()  # not handed over: a consumer resumes at the first index it never saw
                break
            launched.append((work, _dispatch(runner, work, tokens_per_batch, to_host=False)))
            if len(launched) > ahead:
                yield launched.popleft()
        while launched and not gate():  # the batches dispatched ahead, each behind the same gate
            yield launched.popleft()
    finally:
        stages.abort.set()  # the producer stops at its next put
        try:
            stages.join()
        except Aborted:
            pass
