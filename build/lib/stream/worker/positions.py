"""Where a partition resumes, decided from the state store's offset alone, with the broker's
committed offset and this process's memory as witnesses that state existed.

The offset in Redis is written in the same transaction as the state it belongs to, so it is the
only position that matches the state. Three things can be wrong with it, and each is said:
- it is **missing** although the group (the broker's committed offset) or this process (what it
  applied) had moved the partition on: Redis came back empty. The partition is rebuilt from the
  topic's start if the topic still holds it;
- it is **behind what this process applied**: Redis came back from an older copy (an AOF that
  missed its last second). Replaying from there gives the same state;
- it is **before the earliest offset the topic still holds**: the events in between are gone and
  the state can never be caught up. The worker stops with an error saying so.
"""
from __future__ import annotations

from dataclasses import dataclass


class StateLost(RuntimeError):
    """The state of a partition cannot be rebuilt from what the topic still holds."""


@dataclass(frozen=True)
class Resume:
    partition: int
    offset: int
    reason: str  # stored | fresh | rebuilt | rolled_back
    detail: str = ""

    @property
    def loud(self) -> bool:
        """Whether an operator must hear of it: state was lost or went back."""
        return self.reason in ("rebuilt", "rolled_back")


def resume_offset(partition: int, stored: int | None, earliest: int, committed: int | None = None,
                  applied: int | None = None) -> Resume:
    """``stored``: the offset in Redis (None: no key); ``earliest``: the first offset the topic
    holds; ``committed``: the group's offset in the broker (None: never committed); ``applied``:
    the offset this process last committed to Redis itself (None: none)."""
    witness = max(committed or 0, applied or 0)
    if stored is None:
        if witness == 0:
            return Resume(partition, earliest, "fresh")
        if earliest > 0:
            raise StateLost(
                f"partition {partition}: Redis holds no state for it, though it had been applied up to offset "
                f"{witness}, and the topic no longer holds its events from offset 0 (it starts at {earliest}), "
                "so the state cannot be rebuilt. Restore Redis from a backup (AOF or RDB), or start over on "
                "purpose with a new SKIPCACHE_APP_ID and SKIPCACHE_REDIS_PREFIX")
        return Resume(partition, 0, "rebuilt",
                      f"Redis holds no state for partition {partition}, though it had been applied up to offset "
                      f"{witness}: Redis came back empty. Rebuilding it from offset 0")
    if stored < earliest:
        raise StateLost(
            f"partition {partition}: Redis holds its state up to offset {stored}, but the topic now starts at "
            f"{earliest}: the events in between are gone, so the state cannot be caught up. Restore a newer "
            "Redis backup, or start over on purpose with a new SKIPCACHE_APP_ID and SKIPCACHE_REDIS_PREFIX")
    if applied is not None and stored < applied:
        return Resume(partition, stored, "rolled_back",
                      f"Redis went back from offset {applied} to {stored} for partition {partition} (restored "
                      "from an older copy?): replaying from there")
    return Resume(partition, stored, "stored")
