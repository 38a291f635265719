"""Sinks by kind, one file each (``kafka_topic.py``, ``record_list.py``; the interface in
``sink.py``). Adding one: subclass ``Sink`` with a ``kind`` and a ``flush``, add it here."""
from __future__ import annotations

from stream.sinks.kafka_topic import KafkaSink, SharedProducer
from stream.sinks.record_list import ListSink
from stream.sinks.sink import Record, Sink

SINKS: dict[str, type[Sink]] = {KafkaSink.kind: KafkaSink, ListSink.kind: ListSink}

__all__ = ["SINKS", "Sink", "Record", "KafkaSink", "ListSink", "SharedProducer"]
