"""The one small interface between the live worker and where its state lives.

Three jobs, three interfaces: ``PartitionStore`` (what a partition of one stage owns, with the
offset of the next record to apply: a predict partition its users, sessions and pending
predictions; a warm partition its cache shard; both read and add to the global track counts),
``RuntimeConfig`` (thresholds operators set) and ``ExperimentCounters`` (A/B and event counts).
Code takes the one it needs; a backend (``StateStore``) implements all three.

``commit`` applies a batch's changes and the new offset in one atomic step, and
only if the stored offset is still the one the batch started from: a replayed event never counts
twice, a lost Kafka commit never loses one, and a zombie worker cannot overwrite its successor.
Backends, chosen by URL scheme (``stores/__init__.py``): ``stores/memory.py`` (tests, one
process) and ``stores/redis_store.py`` (Redis or Valkey)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class Changes:
    """What one batch of one partition changed. Records are the engine's small lists."""

    users: dict[int, list] = field(default_factory=dict)
    sessions: dict[tuple[int, int], list] = field(default_factory=dict)
    deleted_sessions: set[tuple[int, int]] = field(default_factory=set)
    tracks: dict[str, list] = field(default_factory=dict)
    """Additions to the global track counts (plays, skips, likes), not the counts."""
    blob: bytes | None = None
    """The partition's whole-value state (pending predictions; or the cache shard)."""
    counters: dict[str, dict[str, float]] = field(default_factory=dict)  # hash -> field -> increment
    queue_push: dict[int, list] = field(default_factory=dict)
    """Warm: entries appended to the partition's held-back queue of each source..."""
    queue_drop: dict[int, int] = field(default_factory=dict)
    """...then how many leave the head of each (applied): a commit writes what changed, not the queue."""
    inputs: dict[str, tuple[int, int]] = field(default_factory=dict)
    """The partition's other inputs (predict: ``repartition``, the events other partitions
    forwarded): name -> (offset the batch began at, new offset), fenced like the main offset,
    so a batch that moves only one input still fences a zombie."""


class PartitionStore(Protocol):
    """The state of each Kafka partition and the offset it has reached."""

    def offset(self, partition: int) -> int:
        """Offset of the next event to apply (0 if the partition was never seen)."""

    def position(self, partition: int, source: str = "") -> int | None:
        """Offset of the next event to apply; None when the store holds none (new, or lost).
        ``source``: one of the partition's other inputs (``Changes.inputs``)."""

    def init_offset(self, partition: int, offset: int, source: str = "") -> int:
        """Set the partition's offset (of ``source``) if it has none (atomically); return the stored one."""

    def blob(self, partition: int) -> bytes | None:
        """The partition's serialized whole-value state (``Changes.blob``)."""

    def queue(self, partition: int, source: int) -> list:
        """The entries a warm partition holds back for ``source`` (``Changes.queue_push``)."""

    def fetch(self, partition: int, users: list[int], sessions: list[tuple[int, int]],
              tracks: list[str]) -> tuple[dict[int, list], dict[tuple[int, int], list], dict[str, list]]:
        """The records that exist, by key; tracks: the global counts, as committed."""

    def stage(self, name: str) -> "PartitionStore":
        """The same store for another stage's partitions (its own offsets and state; the same
        config, counters and track counts)."""

    def commit(self, partition: int, expected_offset: int, new_offset: int, changes: Changes) -> bool:
        """Apply atomically iff the stored offset equals ``expected_offset`` (and each of
        ``changes.inputs`` its expected one); False if fenced. ``changes.counters`` are added to the experiment counters in the same transaction."""


class RuntimeConfig(Protocol):
    """Settings operators change without a restart (the thresholds); workers poll them."""

    def config(self) -> dict[str, float]: ...

    def set_config(self, **values: float) -> None: ...


class ExperimentCounters(Protocol):
    """Counters every worker adds to (A/B confusion cells, events by type, rejections)."""

    def counters(self, name: str) -> dict[str, float]: ...

    def reset_counters(self, name: str) -> None: ...


class StateStore(PartitionStore, RuntimeConfig, ExperimentCounters, Protocol):
    """One backend plays all three parts (they share a Redis and its transactions)."""

    def ping(self) -> bool: ...
