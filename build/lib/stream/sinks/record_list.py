"""A sink that keeps what it was given in a list: the simulation's and the tests' Kafka."""
from __future__ import annotations

from stream.sinks.sink import Record, Sink


class ListSink(Sink):
    kind = "list"

    def __init__(self, topic: str):
        super().__init__(topic)
        self.records: list[Record] = []
        """Every flushed record, in order."""
        self.flushes = 0

    async def flush(self) -> None:
        self.records.extend(self.buffer)
        self.buffer.clear()
        self.flushes += 1
