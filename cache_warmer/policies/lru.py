"""``lru``: a classic cache. What is played from slow storage moves to medium."""
from __future__ import annotations

from dataclasses import dataclass

from ..tiers import MEDIUM, SLOW
from .base import CachePolicy, Want


@dataclass(frozen=True)
class LruPolicy(CachePolicy):
    kind = "lru"

    def want(self, track, next_track, tier, next_score):
        return Want(track, MEDIUM, "played") if tier == SLOW else None
