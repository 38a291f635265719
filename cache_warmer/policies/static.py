"""``static``: no warming. The starting placement stays and nothing is demoted: the baseline."""
from __future__ import annotations

from dataclasses import dataclass

from .base import CachePolicy


@dataclass(frozen=True)
class StaticPolicy(CachePolicy):
    kind = "static"
    manages = False

    def want(self, track, next_track, tier, next_score):
        return None
