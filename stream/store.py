"""The one small interface between the live worker and where its state lives.

Everything a partition owns (its users, sessions, tracks, its cache shard and its pending
predictions) is read and written through a StateStore, together with the offset of the next
event to apply. ``commit`` applies a batch's changes and the new offset in one atomic step, and
only if the stored offset is still the one the batch started from: a replayed event never counts
twice, a lost Kafka commit never loses one, and a zombie worker cannot overwrite its successor.
Backends: ``stores/memory.py`` (tests, one process) and ``stores/redis_store.py``."""
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
    warmer: bytes | None = None
    counters: dict[str, dict[str, float]] = field(default_factory=dict)  # hash -> field -> increment


class StateStore(Protocol):
    def offset(self, partition: int) -> int:
        """Offset of the next event to apply (0 if the partition was never seen)."""

    def position(self, partition: int) -> int | None:
        """Offset of the next event to apply; None when the store holds none (new, or lost)."""

    def init_offset(self, partition: int, offset: int) -> int:
        """Set the partition's offset if it has none (atomically); return the stored one."""

    def warmer(self, partition: int) -> bytes | None:
        """The partition's serialized cache shard and pending predictions."""

    def fetch(self, partition: int, users: list[int], sessions: list[tuple[int, int]],
              tracks: list[str]) -> tuple[dict[int, list], dict[tuple[int, int], list], dict[str, list]]:
        """The records that exist, by key."""

    def commit(self, partition: int, expected_offset: int, new_offset: int, changes: Changes) -> bool:
        """Apply atomically iff the stored offset equals ``expected_offset``; False if fenced."""

    def config(self) -> dict[str, float]:
        """Runtime settings operators change without a restart (thresholds)."""

    def set_config(self, **values: float) -> None: ...

    def counters(self, name: str) -> dict[str, float]: ...

    def reset_counters(self, name: str) -> None: ...
