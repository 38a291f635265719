"""A cache decision as a value: what the worker publishes to pozytywka.cache-commands."""
from __future__ import annotations

from dataclasses import dataclass

from .tiers import TIER_NAMES


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs five times as much (a
class Decision:          # decision per promotion, eviction and demotion), and nothing changes one
    track: str
    src: str
    dst: str
    reason: str  # upcoming | played | evicted | cold
    score: float | None
    time: float
    policy: str
    variant: str | None = None  # the A/B variant whose score caused it (None: a cold sweep)

    def to_json(self) -> dict:
        return {"track": self.track, "from": self.src, "to": self.dst, "reason": self.reason,
                "score": self.score, "model": self.policy, "variant": self.variant, "time": self.time}


def decision(track: str, src: int, dst: int, reason: str, score: float | None, time: float, policy: str,
             variant: str | None = None) -> Decision:
    return Decision(track, TIER_NAMES[src], TIER_NAMES[dst], reason, score, time, policy, variant)
