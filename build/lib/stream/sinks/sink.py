"""What every sink is: where a batch's records go before its state is committed.

``add`` buffers a record; ``flush`` returns once every added record is durable, or raises and
keeps them, so the checkpoint can retry it. Only after a flush does the checkpoint commit state
and offsets: a crash in between re-sends records (at-least-once), never loses one. The shape
follows quix-streams' ``BaseSink`` (add, then flush at the checkpoint)."""
from __future__ import annotations

from abc import ABC, abstractmethod

Record = tuple[bytes | None, bytes, int | None]
"""(key, value, partition): a Kafka record; the sink knows its topic. Partition None: the one
the key hashes to (Kafka's default partitioner)."""


class Sink(ABC):
    kind: str = ""

    def __init__(self, topic: str):
        self.topic = topic
        self.buffer: list[Record] = []

    def add(self, key: bytes | None, value: bytes, partition: int | None = None) -> None:
        self.buffer.append((key, value, partition))

    @abstractmethod
    async def flush(self) -> None:
        """Make every buffered record durable, then empty the buffer (on error keep it)."""

    async def close(self) -> None:
        """Release what the sink holds (connections)."""
