"""An export through the live worker's own parts, in one process: the events become records of
each partition (by the producer's partitioner), and every batch goes through the worker's
``Checkpoint`` with list sinks and the memory store. What it commits, publishes and counts is
what the worker on Kafka and Redis would, with no server."""
from __future__ import annotations

import asyncio
from collections.abc import Sequence

import orjson

from models.events import Event

from .bootstrap import Worker
from .checkpoint import CheckpointResult
from .kafka_io import partition_of


def partition_records(events: Sequence[Event], partitions: int) -> dict[int, list[tuple[int, bytes]]]:
    """(offset, value) of every event, by the partition the replay producer would send it to."""
    out: dict[int, list[tuple[int, bytes]]] = {p: [] for p in range(partitions)}
    for e in events:
        rows = out[partition_of(e.user_id, partitions)]
        rows.append((len(rows), orjson.dumps(e.to_json())))
    return out


async def _replay(worker: Worker, records: dict[int, list[tuple[int, bytes]]], batch_size: int) -> CheckpointResult:
    total = CheckpointResult()
    longest = max((len(r) for r in records.values()), default=0)
    for start in range(0, longest, batch_size):
        chunks = {p: rows[start:start + batch_size] for p, rows in records.items()}
        work = [(worker.runtime(p), chunk) for p, chunk in chunks.items() if chunk]
        result = await worker.checkpoint.run(work)
        total.committed += result.committed
        total.fenced += result.fenced
    return total


def replay_in_memory(worker: Worker, events: Sequence[Event], batch_size: int = 1000) -> CheckpointResult:
    """Replay ``events`` (in replay order) through ``worker``; returns every committed batch."""
    return asyncio.run(_replay(worker, partition_records(events, worker.settings.partitions), batch_size))
