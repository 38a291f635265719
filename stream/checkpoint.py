"""The batch commit, as one named unit: what makes the worker correct, in one place.

    process -> add to sinks -> flush -> commit state and offset atomically -> tell the sensors

- *process*: each partition's run of records through its ``PartitionRuntime`` (the shared
  pipeline), giving a ``BatchOutput`` with the batch's decisions, dead letters, resolved outcomes
  and state changes. The A/B counters ride inside the changes: they must be exactly-once too.
- *sinks*: decisions to ``pozytywka.cache-commands``, dead letters to their topic. ``flush``
  returns once the broker has them; while it cannot (the broker is away), the checkpoint retries
  with backoff and the batch waits, committed nowhere.
- *commit*: one Redis transaction per partition, fenced on the offset the batch started from.
  A crash before it re-sends the batch's records (at-least-once commands); state and counters
  are applied exactly once. A fenced partition is reported, not committed.
- *sensors*: told only about committed batches (Prometheus metrics, latency).

The live worker runs it with Kafka sinks and the Redis store; tests and ``replay_in_memory``
(``stream/worker_replay.py``) with list sinks and the memory store. Modelled on quix-streams'
``checkpointing/checkpoint.py``."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import orjson
from redis.backoff import ExponentialWithJitterBackoff

from .partition_runtime import BatchOutput, PartitionRuntime
from .sinks import Sink

Sensor = Callable[[BatchOutput, float], None]
"""Told of every committed batch, with the seconds from the start of the checkpoint."""
FLUSH_BACKOFF = ExponentialWithJitterBackoff(cap=5.0, base=0.1)


def command_record(decision, models: dict[str, str]) -> tuple[bytes, bytes]:
    payload = decision.to_json()
    payload["model"] = models.get(decision.variant) if decision.variant else None
    return decision.track.encode(), orjson.dumps(payload)


def dead_letter_record(partition: int, offset: int, reason: str, raw: bytes) -> tuple[None, bytes]:
    return None, orjson.dumps({"reason": reason, "partition": partition, "offset": offset,
                               "raw": raw[:4096].decode("utf-8", "replace")})


@dataclass
class CheckpointResult:
    committed: list[BatchOutput] = field(default_factory=list)
    fenced: list[BatchOutput] = field(default_factory=list)
    """Batches the store refused (another worker, or a fault, moved the partition): the caller
    re-reads those partitions from the store."""


class Checkpoint:
    def __init__(self, commands: Sink, dead_letters: Sink, sensors: Sequence[Sensor] = (),
                 models: dict[str, str] | None = None,
                 on_flush_error: Callable[[BaseException], None] | None = None,
                 on_flushed: Callable[[], None] | None = None):
        """``models``: variant -> model name, written into every command. ``on_flush_error`` /
        ``on_flushed``: the broker went away / answers again (health and metrics)."""
        self.commands = commands
        self.dead_letters = dead_letters
        self.sensors = list(sensors)
        self.models = models or {}
        self.on_flush_error = on_flush_error
        self.on_flushed = on_flushed

    async def run(self, work: Sequence[tuple[PartitionRuntime, list[tuple]]]) -> CheckpointResult:
        """``work``: each partition's runtime and its unbroken run of records."""
        started = time.perf_counter()
        outputs = [(rt, rt.process(run)) for rt, run in work]  # inline: a thread here costs GIL contention
        for _, out in outputs:
            for offset, reason, raw in out.dead_letters:
                self.dead_letters.add(*dead_letter_record(out.partition, offset, reason, raw))
            if out.effects is not None:
                for d in out.effects.decisions:
                    self.commands.add(*command_record(d, self.models))
        await self.flush()
        result = CheckpointResult()
        for rt, out in outputs:
            if rt.commit(out):
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
            errors = [r for r in await asyncio.gather(self.dead_letters.flush(), self.commands.flush(),
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
