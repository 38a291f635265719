"""Kafka helpers shared by the producer, the worker and the simulation's partition mapping."""
from __future__ import annotations

from kafka.partitioner.default import murmur2

SLOW_STEP_SECONDS = 2.0
"""kafka-python 3 warns that a task "is blocking the event loop" when one step of its network
thread takes over 0.1 s. In a process whose main thread holds the GIL in a tight loop (a replay,
the embedded worker beside an admin client) that is the loop, not a blocked network: a step is
called slow here from 2 s."""


def client_config() -> dict:
    """Extra configuration for every kafka-python client we make (producer, admin, consumer):
    its network client with the slow-step threshold above; nothing for kafka-python 2."""
    try:
        from kafka.net.compat import KafkaNetClient  # kafka-python 3: the client its classes make by default
    except ImportError:  # kafka-python 2 has no such check
        return {}

    def client(**configs):
        return KafkaNetClient(slow_task_threshold_secs=SLOW_STEP_SECONDS, **configs)

    return {"kafka_client": client}


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
