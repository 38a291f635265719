"""``lru``: a classic cache. What is played from slow storage moves to medium."""
from __future__ import annotations

from dataclasses import dataclass

from ..tiers import MEDIUM, SLOW
from .cache_policy import CachePolicy, Want


@dataclass(frozen=True)
class LruPolicy(CachePolicy):
    kind = "lru"

    def played(self, track, tier):
        return Want(track, MEDIUM, "played") if tier == SLOW else None
