"""An export through the live worker's own parts, in one process: the events become records of
each sessions partition (by the producer's partitioner), every batch goes through the predict
stage's ``Checkpoint``, and the entries it publishes through the warm stage's, with list sinks
and the memory store. What it commits, publishes and counts is
what the worker on Kafka and Redis would, with no server."""
from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence

import orjson

from models.events import Event

from stream.bootstrap import Worker
from stream.worker.checkpoint import CheckpointResult
from stream.kafka_io import partition_of
from stream.sinks import ListSink


def partition_records(events: Sequence[Event], partitions: int) -> dict[int, list[tuple[int, bytes]]]:
    """(offset, value) of every event, by the partition the replay producer would send it to."""
    out: dict[int, list[tuple[int, bytes]]] = {p: [] for p in range(partitions)}
    for e in events:
        rows = out[partition_of(e.user_id, partitions)]
        rows.append((len(rows), orjson.dumps(e.to_json())))
    return out


async def _replay(worker: Worker, events: Sequence[Event], batch_size: int, total: CheckpointResult) -> None:
    predict, warm = worker.stages["predict"], worker.stages["warm"]
    entries = predict.checkpoint.sinks["entries"]  # a ListSink: the entries topic, in memory
    topic: dict[int, list[tuple[int, bytes]]] = {q: [] for q in range(warm.partitions)}
    records = partition_records(events, predict.partitions)
    taken = {p: 0 for p in records}
    step = batch_size * predict.partitions  # rounds of the replay's order: the partitions keep pace
    for start in range(0, len(events), step):  # the checkpoint applies a round epoch by epoch
        counts = Counter(partition_of(e.user_id, predict.partitions) for e in events[start:start + step])
        work = []
        for p, n in counts.items():
            work.append((predict.runtime(p), records[p][taken[p]:taken[p] + n]))
            taken[p] += n
        result = await predict.checkpoint.run(work)
        for _, value, q in entries.records:
            topic[q].append((len(topic[q]), value))
        entries.records.clear()
        runtimes = {q: warm.runtime(q) for q in topic}
        result2 = await warm.checkpoint.run([(rt, topic[q][rt.next_offset:]) for q, rt in runtimes.items()
                                             if len(topic[q]) > rt.next_offset])
        for r in (result, result2):
            total.committed += r.committed
            total.fenced += r.fenced
    # the data ended: no source will send more, so nothing is waited for
    for rt in warm.runtimes.values():
        rt.idle_wall_seconds = 0.0
    result = await warm.checkpoint.run([(rt, []) for rt in warm.runtimes.values()])
    total.committed += result.committed
    total.fenced += result.fenced


def replay_in_memory(worker: Worker, events: Sequence[Event], batch_size: int = 1000) -> CheckpointResult:
    """Replay ``events`` (in replay order) through ``worker``'s two stages, the entries topic a
    list per partition; returns every committed batch of both stages."""
    total = CheckpointResult()
    asyncio.run(_replay(worker, events, batch_size, total))
    return total  # not the task's result: asyncio.run's SIGINT check formats that task's repr (seconds of it)


def list_sinks() -> dict[str, dict[str, ListSink]]:
    """Each stage's sinks as lists (``build_worker(..., sinks=list_sinks())``)."""
    return {"predict": {"entries": ListSink("entries"), "dead_letters": ListSink("dead-letters"),
                        "forward": ListSink("repartition")},
            "warm": {"commands": ListSink("commands"), "dead_letters": ListSink("dead-letters")}}
