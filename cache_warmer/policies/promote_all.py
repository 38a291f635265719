"""``promote_all``: every upcoming track to medium, whatever the listener will do."""
from __future__ import annotations

from dataclasses import dataclass

from ..tiers import MEDIUM
from .base import CachePolicy, Want


@dataclass(frozen=True)
class PromoteAllPolicy(CachePolicy):
    kind = "promote_all"

    def want(self, track, next_track, tier, next_score):
        return Want(next_track, MEDIUM, "upcoming", next_score) if next_track is not None else None
