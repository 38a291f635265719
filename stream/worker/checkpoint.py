"""The batch commit, as one named unit: what makes each stage correct, in one place.

    process -> add to sinks -> flush -> commit state and offset atomically -> tell the sensors

- *process*: each partition's run of records through its runtime (``predict_runtime.py`` or
  ``warm_runtime.py``), giving a ``BatchOutput``: what to publish, dead letters, resolved
  outcomes, cache effects and state changes. Counters that must be exactly-once (A/B cells,
  events by type) ride inside the changes.
- *sinks*: the predict stage's entries to the internal entries topic, the warm stage's commands
  to ``pozytywka.cache-commands``, dead letters to their topic. ``flush`` returns once the broker
  has them; while it cannot (the broker is away), the checkpoint retries with backoff and the
  batch waits, committed nowhere.
- *commit*: one Redis transaction per partition, fenced on the offset the batch started from.
  A crash before it re-sends the batch's records (at-least-once); state and counters are
  applied exactly once, and the warm stage drops re-sent entries (``warm_runtime.py``). A
  fenced partition is reported, not committed.
- *sensors*: told only about committed batches (Prometheus metrics, latency).

The live worker runs it with Kafka sinks and the Redis store; tests and ``replay_in_memory``
(``stream/worker/in_memory.py``) with list sinks and the memory store. Modelled on quix-streams'
``checkpointing/checkpoint.py``."""
from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass, field

import orjson
import redis
from redis.exceptions import RedisClusterException
from redis.backoff import ExponentialWithJitterBackoff

from stream.worker.stages.partition import BatchOutput, PartitionRuntime
from stream.sinks import Sink
from stream.store import Changes, StateMoved

log = logging.getLogger(__name__)

Offload = Callable[[Callable[[], object]], Awaitable[object]]
"""Runs a blocking step (process: it reads Redis; commit: it writes Redis) and awaits its result:
the worker runs it in a thread so the event loop (heartbeats, fetches, /healthz) never waits on
Redis; tests and the in-memory replay run it inline."""
Sensor = Callable[[BatchOutput, float], None]
"""Told of every committed batch, with the seconds from the start of the checkpoint."""
BACKOFF = ExponentialWithJitterBackoff(cap=5.0, base=0.1)
"""How the worker waits between tries for a dependency that went away (Redis, the broker; a sink's flush)."""


def dead_letter_record(out: BatchOutput, offset: int, reason: str, raw: bytes) -> tuple[None, bytes]:
    error = out.errors.get(offset)
    return None, orjson.dumps({"reason": reason, "stage": out.stage, "partition": out.partition, "offset": offset,
                               **({"error": error} if error else {}), "raw": raw[:4096].decode("utf-8", "replace")})


TRANSIENT: tuple[type[BaseException], ...] = (redis.RedisError, RedisClusterException, StateMoved)
"""Errors of a dependency, not of the records: they go to the worker's recovery (wait, re-read,
seek), never to the dead letters. A cluster's ``SlotNotCoveredError`` (a primary gone, its
replica not promoted yet) is not a ``RedisError``."""
MAX_POISONED_IN_A_ROW = 3
"""Records that fail one by one in a row before the partition is stopped: then the fault is in
its stored state, not in the records, and dead-lettering on would empty the partition."""


class PartitionStopped(Exception):
    """A partition's records fail whatever is done with them (or its state cannot be loaded): it
    is stopped, loudly (``/livez`` 503 names it), rather than dead-lettered away."""

    def __init__(self, stage: str, partition: int, offset: int, error: BaseException):
        super().__init__(f"{stage} partition {partition} stopped at offset {offset}: {error!r}")
        self.stage, self.partition, self.offset, self.error = stage, partition, offset, error


@dataclass
class CheckpointResult:
    committed: list[BatchOutput] = field(default_factory=list)
    fenced: list[BatchOutput] = field(default_factory=list)
    """Batches the store refused (another worker, or a fault, moved the partition): the caller
    re-reads those partitions from the store."""
    stopped: list[PartitionStopped] = field(default_factory=list)
    """Partitions whose records fail one by one (their state is at fault): not committed further."""


@dataclass
class _Failed:
    """A partition's batch whose processing raised: isolated record by record after the others."""

    error: BaseException


class Checkpoint:
    def __init__(self, sinks: dict[str, Sink], sensors: Sequence[Sensor] = (),
                 on_flush_error: Callable[[BaseException], None] | None = None,
                 on_flushed: Callable[[], None] | None = None, offload: Offload | None = None):
        """``sinks``: by the name a ``BatchOutput.publish`` record gives (``entries``,
        ``commands``), and ``dead_letters``. ``on_flush_error`` / ``on_flushed``: the broker
        went away / answers again (health and metrics)."""
        self.sinks = sinks
        self.sensors = list(sensors)
        self.on_flush_error = on_flush_error
        self.on_flushed = on_flushed
        self.offload = offload or inline

    async def run(self, work: Sequence[tuple[PartitionRuntime, list[tuple]]]) -> CheckpointResult:
        """``work``: each partition's runtime and its unbroken run of records. A batch whose
        processing raises (a record no check foresaw) is caught here: its partition is re-read
        from the store and its records applied one at a time, the failing ones dead-lettered with
        the error named; the other partitions' batches are not held back by it."""
        started = time.perf_counter()
        outputs = await self.offload(lambda: _process_together(work))
        result = CheckpointResult()
        await self._settle([(rt, out) for rt, out in outputs if not isinstance(out, _Failed)], result, started)
        for (rt, out), (_, run) in zip(outputs, work):
            if isinstance(out, _Failed):
                log.error("%s partition %d: a batch of %d records at offset %d failed (%r); applying them one by one",
                          rt.stage, rt.partition, len(run), rt.next_offset, out.error, exc_info=out.error)
                await self._isolate(rt, run, result, started)
        return result

    async def _settle(self, outputs: list[tuple[PartitionRuntime, BatchOutput]], result: CheckpointResult,
                      started: float) -> None:
        """sinks -> flush -> commit -> sensors for processed batches."""
        if not outputs:
            return
        sinks = self.sinks
        for _, out in outputs:
            for offset, reason, raw in out.dead_letters:
                sinks["dead_letters"].add(*dead_letter_record(out, offset, reason, raw))
            for name, key, value, partition in out.publish:
                sinks[name].add(key, value, partition)
        await self.flush()
        applied = await self.offload(lambda: [rt.commit(out) for rt, out in outputs])
        for (rt, out), ok in zip(outputs, applied):
            if ok:
                result.committed.append(out)
                elapsed = time.perf_counter() - started
                for sensor in self.sensors:
                    sensor(out, elapsed)
            else:
                result.fenced.append(out)

    async def _isolate(self, rt: PartitionRuntime, run: list[tuple], result: CheckpointResult,
                       started: float) -> None:
        """Re-read the partition, then apply and commit ``run`` one record at a time; a record
        that fails alone is dead-lettered (``apply_failed``, the error named) and the partition
        moves past it. Records that keep failing in a row stop the partition."""
        await self.offload(rt.load)
        in_a_row = 0
        for record in run:
            if record[0] < rt.next_offset:
                continue
            if record[0] > rt.next_offset:
                return  # the partition moved (fenced meanwhile): the worker re-reads it
            out = await self.offload(lambda: _process(rt, [record]))
            if isinstance(out, _Failed):
                in_a_row += 1
                if in_a_row >= MAX_POISONED_IN_A_ROW:
                    result.stopped.append(PartitionStopped(rt.stage, rt.partition, record[0], out.error))
                    return
                await self.offload(rt.load)
                out = poisoned(rt, record, out.error)
                log.error("%s partition %d: record at offset %d dead-lettered: %r", rt.stage, rt.partition,
                          record[0], out.errors[record[0]])
            else:
                in_a_row = 0
            before = len(result.fenced)
            await self._settle([(rt, out)], result, started)
            if len(result.fenced) > before:
                return

    async def flush(self) -> None:
        """Flush every sink; retry with backoff until they all have succeeded."""
        attempt = 0
        while True:
            # both run to the end (a failed one keeps its records) before any retry
            errors = [r for r in await asyncio.gather(*(sink.flush() for sink in self.sinks.values()),
                                                       return_exceptions=True) if isinstance(r, BaseException)]
            if errors:  # the broker away, a timeout: the records stay buffered
                exc = errors[0]
                if not isinstance(exc, Exception):
                    raise exc  # cancelled: the worker is stopping
                attempt += 1
                if self.on_flush_error is not None:
                    self.on_flush_error(exc)
                await asyncio.sleep(BACKOFF.compute(attempt))
                continue
            if attempt and self.on_flushed is not None:
                self.on_flushed()
            return


async def inline(step: Callable[[], object]) -> object:
    return step()


def _process_together(work: Sequence[tuple[PartitionRuntime, list[tuple]]]) -> list[tuple[PartitionRuntime, object]]:
    """Each partition's batch processed; those that read the track counts (the predict stage's
    ``process_steps``) epoch by epoch across the partitions: a batch that reaches an epoch waits
    (a paused generator) until every batch here has applied its events of the epochs before, and
    then reads, besides the committed counts, theirs (``peers``). So one checkpoint may span any
    number of epochs and still read what a replay epoch by epoch reads."""
    results: list[object] = [None] * len(work)
    stepped = tuple(rt for rt, _ in work if hasattr(rt, "process_steps"))
    heap: list[tuple[int, int, Generator]] = []
    try:
        for i, (rt, run) in enumerate(work):
            rt_steps = getattr(rt, "process_steps", None)
            if rt_steps is None:
                results[i] = _process(rt, run)
                continue
            rt.peers = stepped
            _step(heap, results, i, rt_steps(run))
        while heap:  # the earliest epoch first
            _, i, steps = heapq.heappop(heap)
            _step(heap, results, i, steps)
    finally:
        for rt in stepped:
            rt.peers = ()
    return [(rt, out) for (rt, _), out in zip(work, results)]


def _step(heap: list, results: list, i: int, steps: Generator) -> None:
    """Run batch ``i`` to its next epoch (queued in ``heap``) or to its end (its output)."""
    try:
        epoch = next(steps)
    except StopIteration as end:
        results[i] = end.value
    except TRANSIENT:
        raise
    except Exception as exc:  # noqa: BLE001 - a record no check foresaw; isolated by the caller
        results[i] = _Failed(exc)
    else:
        heapq.heappush(heap, (epoch, i, steps))


def _process(rt: PartitionRuntime, run: list[tuple]) -> BatchOutput | _Failed:
    try:
        return rt.process(run)
    except TRANSIENT:
        raise
    except Exception as exc:  # noqa: BLE001 - a record no check foresaw; isolated by the caller
        return _Failed(exc)


def poisoned(rt: PartitionRuntime, record: tuple, error: BaseException) -> BatchOutput:
    """The batch of one record that fails alone: dead-lettered and counted, the offset moved past it."""
    offset = record[0]
    out = BatchOutput(rt.stage, rt.partition, offset, offset + 1)
    out.reject(offset, "apply_failed", record[1], f"{type(error).__name__}: {error}"[:500])
    out.changes = Changes(counters={"rejected": rt.rejected_counts(out)})
    return out
