"""Publish a batch's records with aiokafka's batch API: one produce request per partition per
batch instead of a future per record (faust's ``send`` per decision cost a third of the worker's
time). Keys are partitioned as Kafka's default partitioner would (murmur2)."""
from __future__ import annotations

import asyncio
import itertools

from kafka.partitioner.default import murmur2


class BatchPublisher:
    def __init__(self, producer) -> None:
        self.producer = producer  # an aiokafka.AIOKafkaProducer
        self._partitions: dict[str, list[int]] = {}
        self._round_robin = itertools.count()

    async def _partitions_of(self, topic: str) -> list[int]:
        parts = self._partitions.get(topic)
        if parts is None:
            parts = self._partitions[topic] = sorted(await self.producer.partitions_for(topic))
        return parts

    async def publish(self, topic: str, records: list[tuple[bytes | None, bytes]]) -> int:
        """Send and wait until the broker has every record; returns how many were sent."""
        if not records:
            return 0
        parts = await self._partitions_of(topic)
        n = len(parts)
        builders: dict[int, object] = {}
        pending = []
        for key, value in records:
            p = parts[(murmur2(key) & 0x7FFFFFFF) % n] if key is not None else parts[next(self._round_robin) % n]
            builder = builders.get(p)
            if builder is None:
                builder = builders[p] = self.producer.create_batch()
            if builder.append(key=key, value=value, timestamp=None) is None:  # full: send it, start another
                pending.append(await self.producer.send_batch(builder, topic, partition=p))
                builder = builders[p] = self.producer.create_batch()
                builder.append(key=key, value=value, timestamp=None)
        for p, builder in builders.items():
            if builder.record_count():
                pending.append(await self.producer.send_batch(builder, topic, partition=p))
        await asyncio.gather(*pending)
        return len(records)
