"""``promote_all``: every upcoming track to medium, whatever the listener will do."""
from __future__ import annotations

from dataclasses import dataclass

from ..tiers import MEDIUM
from .cache_policy import CachePolicy, Want


@dataclass(frozen=True)
class PromoteAllPolicy(CachePolicy):
    kind = "promote_all"

    def upcoming(self, track, score):
        return Want(track, MEDIUM, "upcoming", score)
