"""Policies: what to promote on a play. Each sees the playing track, the upcoming one and the
scores the pipeline computed for them, and names the tier it wants the track in.

- ``static``: no warming (the starting placement stays, nothing is demoted).
- ``lru``: promote what is played to medium (a classic cache).
- ``promote_all``: promote every upcoming track to medium.
- score policies (``naive``, a model, ``oracle``): promote the upcoming track to medium when
  P(full) >= threshold and to fast when P(full) >= fast_threshold. ``oracle`` scores 1 for an
  upcoming play that will be played in full and 0 otherwise: the ceiling, not a real policy.
"""
from __future__ import annotations

from dataclasses import dataclass

from .tiers import FAST, MEDIUM, SLOW


@dataclass(frozen=True)
class Policy:
    name: str
    kind: str  # static | lru | promote_all | score
    scorer: str | None = None  # for kind == "score": naive | oracle | a model name
    threshold: float = 0.5
    fast_threshold: float = 0.95

    @property
    def manages(self) -> bool:
        """Whether it moves tracks at all (static does not even demote)."""
        return self.kind != "static"

    def target(self, score: float) -> int:
        if score >= self.fast_threshold:
            return FAST
        if score >= self.threshold:
            return MEDIUM
        return SLOW


def standard_policies(models: list[str], threshold: float = 0.5, fast_threshold: float = 0.95,
                      with_naive: bool = True) -> list[Policy]:
    policies = [Policy("static", "static"), Policy("lru", "lru"), Policy("promote_all", "promote_all")]
    if with_naive:
        # the naive rule's score is 0 or 1: promote to medium on a genre match, never to fast
        policies.append(Policy("naive", "score", "naive", 0.5, 1.1))
    for m in models:
        policies.append(Policy(m, "score", m, threshold, fast_threshold))
    policies.append(Policy("oracle", "score", "oracle", 0.5, 1.1))
    return policies
