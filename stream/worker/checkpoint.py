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
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import orjson
from redis.backoff import ExponentialWithJitterBackoff

from stream.worker.stages.partition import BatchOutput, PartitionRuntime
from stream.sinks import Sink

Offload = Callable[[Callable[[], object]], Awaitable[object]]
"""Runs a blocking step (process: it reads Redis; commit: it writes Redis) and awaits its result:
the worker runs it in a thread so the event loop (heartbeats, fetches, /healthz) never waits on
Redis; tests and the in-memory replay run it inline."""
Sensor = Callable[[BatchOutput, float], None]
"""Told of every committed batch, with the seconds from the start of the checkpoint."""
FLUSH_BACKOFF = ExponentialWithJitterBackoff(cap=5.0, base=0.1)


def dead_letter_record(out: BatchOutput, offset: int, reason: str, raw: bytes) -> tuple[None, bytes]:
    return None, orjson.dumps({"reason": reason, "stage": out.stage, "partition": out.partition, "offset": offset,
                               "raw": raw[:4096].decode("utf-8", "replace")})


@dataclass
class CheckpointResult:
    committed: list[BatchOutput] = field(default_factory=list)
    fenced: list[BatchOutput] = field(default_factory=list)
    """Batches the store refused (another worker, or a fault, moved the partition): the caller
    re-reads those partitions from the store."""


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
        """``work``: each partition's runtime and its unbroken run of records."""
        started = time.perf_counter()
        outputs = await self.offload(lambda: [(rt, rt.process(run)) for rt, run in work])
        sinks = self.sinks
        for _, out in outputs:
            for offset, reason, raw in out.dead_letters:
                sinks["dead_letters"].add(*dead_letter_record(out, offset, reason, raw))
            for name, key, value, partition in out.publish:
                sinks[name].add(key, value, partition)
        await self.flush()
        result = CheckpointResult()
        applied = await self.offload(lambda: [rt.commit(out) for rt, out in outputs])
        for (rt, out), ok in zip(outputs, applied):
            if ok:
                result.committed.append(out)
                elapsed = time.perf_counter() - started
                for sensor in self.sensors:
                    sensor(out, elapsed)
            else:
                result.fenced.append(out)
        return result

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
                await asyncio.sleep(FLUSH_BACKOFF.compute(attempt))
                continue
            if attempt and self.on_flushed is not None:
                self.on_flushed()
            return


async def inline(step: Callable[[], object]) -> object:
    return step()
