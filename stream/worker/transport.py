"""Faust's aiokafka transport, changed in the two places the worker needs; handed to one app
through its public ``app.transport`` setter, so nothing is patched process-wide.

1. **Where a partition resumes is the state store's word.** faust keeps a *read offset* per
   partition and drops every record below it (``DROPPED MESSAGE ROFF`` in its debug log). After
   every rebalance its recovery seeks the stream to the broker's committed offsets and sets the
   read offsets from them (``Consumer.perform_seek`` → ``seek_to_committed``), and its fetcher
   moves them on as it hands records over, also records fetched before a seek. The worker
   commits its offsets to Redis atomically with its state, so a broker offset ahead of Redis (a
   batch acknowledged to Kafka but never applied), or a seek back after a Redis outage, left it
   waiting forever for records faust dropped. Here ``seek_to_committed`` asks the worker where
   each partition resumes and seeks there (the broker's committed offset is kept only as a
   witness that the group has run before), and faust drops no record of the positioned topics:
   the worker skips what it already applied itself, by offset.
2. **Fetches wait at most ``fetch_max_wait_ms``.** faust hard-codes 1,500 ms; against Tansu a
   quiet partition's fetch waits that long (p50 produce-to-decision 624 ms at 2,000 events/s).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from faust.transport.drivers import aiokafka as driver
from faust.types import TP

Positions = Callable[[Mapping[TP, int | None], Mapping[TP, int]], Awaitable[Mapping[TP, int]]]
"""(broker-committed offsets, earliest offsets the topic holds) of the assigned partitions of the
positioned topics -> the offset each resumes at."""


class ConsumerThread(driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: "Transport") -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = transport.fetch_max_wait_ms  # aiokafka reads it when it starts
        return consumer


class ReadOffsets(defaultdict):
    """faust's read offsets, which read as unknown (None: drop nothing) for positioned topics."""

    def __init__(self, topics: frozenset[str]):
        super().__init__(lambda: None)
        self.topics = topics

    def __getitem__(self, tp: TP) -> int | None:
        return None if tp.topic in self.topics else super().__getitem__(tp)


class Consumer(driver.Consumer):
    def __init__(self, transport: "Transport", *args: Any, **kwargs: Any) -> None:
        super().__init__(transport, *args, **kwargs)
        self._read_offset = ReadOffsets(transport.positioned_topics)

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def seek_to_committed(self) -> Mapping[TP, int]:
        committed = dict(await super().seek_to_committed())
        transport: Transport = self.transport  # type: ignore[assignment]
        mine = {tp for tp in self.assignment() if tp.topic in transport.positioned_topics}
        if not mine or transport.positions is None:
            return committed
        earliest = await self.earliest_offsets(*mine)
        positions = await transport.positions({tp: committed.get(tp) for tp in mine}, earliest)
        await self.seek_wait(positions)  # in the consumer's own thread, like faust's seeks
        return {**committed, **positions}


class Transport(driver.Transport):
    Consumer = Consumer

    def __init__(self, url: Any, app: Any, *, fetch_max_wait_ms: int = 1500, positions: Positions | None = None,
                 positioned_topics: Iterable[str] = ()) -> None:
        super().__init__(url, app)
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.positions = positions
        self.positioned_topics = frozenset(positioned_topics)
