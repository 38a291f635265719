"""``score``: promote the upcoming track to medium when P(played in full) >= ``threshold`` and to
fast when it is >= ``fast_threshold``. The scores come from a model, the naive rule or the A/B
split, named by ``scorer``; operators move the thresholds while the worker runs."""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..tiers import FAST, MEDIUM, SLOW
from .cache_policy import CachePolicy, Want


@dataclass(frozen=True)
class ThresholdPolicy(CachePolicy):
    threshold: float = 0.5
    fast_threshold: float = 0.95

    kind = "score"
    scored = True

    def target(self, score: float) -> int:
        if score >= self.fast_threshold:
            return FAST
        if score >= self.threshold:
            return MEDIUM
        return SLOW

    def upcoming(self, track, score):
        target = self.target(score)
        return Want(track, target, "upcoming", score) if target != SLOW else None

    def with_thresholds(self, threshold: float, fast_threshold: float) -> "ThresholdPolicy":
        if (threshold, fast_threshold) == (self.threshold, self.fast_threshold):
            return self
        return replace(self, threshold=threshold, fast_threshold=fast_threshold)

    def describe(self) -> dict:
        return {"threshold": self.threshold, "fast_threshold": self.fast_threshold}
