"""A sink that produces to a Kafka topic with aiokafka's public batch API: one produce request per
partition per flush rather than a future per record (faust's ``send`` per decision cost a third
of the worker's time). A record goes to the partition it names, else to the one Kafka's default
partitioner picks for its key (murmur2).

Sinks of one process share one ``SharedProducer``; it starts on first use, so a broker that is
away at startup is an error ``flush`` raises (and the checkpoint retries), not a crash."""
from __future__ import annotations

import asyncio
import itertools

from aiokafka import AIOKafkaProducer
from kafka.partitioner.default import murmur2

from stream.sinks.sink import Record, Sink


MAX_BATCH_BYTES = 1_000_000
"""One produce batch per partition per flush, up to this (aiokafka's default, 16 KiB, split a
checkpoint's entries into hundreds of batches, each built and sent on the event loop); under
Kafka's default ``message.max.bytes`` and a consumer's default per-partition fetch (1 MiB each),
so the cache-commands topic's own consumers read it as they are."""
KEY_CACHE = 200_000
"""Keys whose partition is remembered (murmur2 in Python was 5% of the event loop's time); a
track or user key repeats across batches, so a bounded dict answers most."""


class SharedProducer:
    def __init__(self, bootstrap_servers: str, **config):
        self.bootstrap_servers = bootstrap_servers
        # no linger: a flush hands aiokafka whole batches, which would otherwise wait 5 ms each
        self.config = {"acks": "all", "linger_ms": 0, "max_batch_size": MAX_BATCH_BYTES, **config}
        self._producer: AIOKafkaProducer | None = None
        self._partitions: dict[str, list[int]] = {}
        self._key_partition: dict[str, dict[bytes, int]] = {}
        self._round_robin = itertools.count()
        self._starting: asyncio.Lock | None = None  # made in the loop that first needs it

    async def get(self) -> AIOKafkaProducer:
        """The producer, started once: sinks flushing together (both stages, or one checkpoint's
        sinks gathered) wait for the same start rather than each starting one (and leaking all
        but the last: "Unclosed AIOKafkaProducer")."""
        if self._producer is None:
            if self._starting is None:
                self._starting = asyncio.Lock()
            async with self._starting:
                if self._producer is None:
                    producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap_servers, **self.config)
                    try:
                        await producer.start()
                    except BaseException:
                        await producer.stop()
                        raise
                    self._producer = producer
        return self._producer

    async def partitions(self, topic: str) -> list[int]:
        parts = self._partitions.get(topic)
        if parts is None:
            producer = await self.get()
            parts = self._partitions[topic] = sorted(await producer.partitions_for(topic))
        return parts

    async def publish(self, topic: str, records: list[Record]) -> None:
        """Send and wait until the broker has every record."""
        if not records:
            return
        producer = await self.get()
        parts = await self.partitions(topic)
        n = len(parts)
        cache = self._key_partition.setdefault(topic, {})
        builders: dict[int, object] = {}
        pending = []
        for key, value, p in records:
            if p is None:
                if key is None:
                    p = parts[next(self._round_robin) % n]
                else:
                    p = cache.get(key)
                    if p is None:
                        if len(cache) >= KEY_CACHE:
                            cache.clear()
                        p = cache[key] = parts[(murmur2(key) & 0x7FFFFFFF) % n]
            builder = builders.get(p)
            if builder is None:
                builder = builders[p] = producer.create_batch()
            if builder.append(key=key, value=value, timestamp=None) is None:  # full: send it, start another
                pending.append(await producer.send_batch(builder, topic, partition=p))
                builder = builders[p] = producer.create_batch()
                builder.append(key=key, value=value, timestamp=None)
        for p, builder in builders.items():
            if builder.record_count():
                pending.append(await producer.send_batch(builder, topic, partition=p))
        await asyncio.gather(*pending)

    async def stop(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()


class KafkaSink(Sink):
    kind = "kafka"

    def __init__(self, topic: str, producer: SharedProducer):
        super().__init__(topic)
        self.producer = producer

    async def flush(self) -> None:
        if self.buffer:
            await self.producer.publish(self.topic, self.buffer)
            self.buffer.clear()

    async def close(self) -> None:
        await self.producer.stop()
