"""What every cache policy is: told of a track being played and of a track coming up next, it
may want that track in a warmer tier.

A policy only decides; the warmer (``cache_warmer/warmer.py``) applies the wish to the tiers,
counts it and evicts what must make room. Each wish is about the one track it was told of, so
whoever owns that track's placement can ask. The wish is the same for every caller (simulation,
live worker), so a policy is a small pure class."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple


class Want(NamedTuple):
    """``track`` should be in ``tier`` at least; ``score`` is what the wish rests on, if any."""

    track: str
    tier: int
    reason: str
    score: float | None = None


@dataclass(frozen=True)
class CachePolicy:
    name: str
    scorer: str | None = None
    """The score column it reads (a model name, ``naive``, ``ab``, ``oracle``); None: no scores."""

    kind: ClassVar[str] = ""
    manages: ClassVar[bool] = True
    """Whether it moves tracks at all (a policy that does not even demotes nothing)."""
    scored: ClassVar[bool] = False
    """Whether its scores are predictions that accuracy figures should judge."""

    def played(self, track: str, tier: int) -> Want | None:
        """``track``, now in ``tier``, is being played: the wish, or None."""
        return None

    def upcoming(self, track: str, score: float | None) -> Want | None:
        """``track`` is played next with P(played in full) = ``score`` (None when the policy's
        scorer gave none): the wish, or None. A wish for a tier the track is already in (or
        above) only refreshes its recency."""
        return None

    def with_thresholds(self, threshold: float, fast_threshold: float) -> "CachePolicy":
        """The same policy under new operator thresholds (a policy without any ignores them)."""
        return self

    def describe(self) -> dict:
        """Its settings, reported beside its figures."""
        return {}
