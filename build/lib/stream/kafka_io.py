"""Kafka helpers shared by the producer, the worker and the simulation's partition mapping."""
from __future__ import annotations

from kafka.partitioner.default import murmur2


def user_key(user_id: int) -> bytes:
    return str(user_id).encode()


def partition_of(user_id: int, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2 of the key) sends a user's events to;
    the simulation uses it so its shards are the worker's partitions."""
    return (murmur2(user_key(user_id)) & 0x7FFFFFFF) % partitions


def track_partition_of(track_id: str, partitions: int) -> int:
    """The warm-stage partition that owns a track: murmur2 of the track id, as Kafka's default
    partitioner would place a message keyed by it."""
    return (murmur2(track_id.encode()) & 0x7FFFFFFF) % partitions
