"""Shadow placements: beside a warm shard's live placement, the same policy at other thresholds,
fed the same entries, with the same capacities and eviction, commanding nothing and only
counting. What another threshold would do now, on today's traffic and today's model, measured
rather than guessed (``advice.py`` weighs them).

A shadow is a ``CacheWarmer`` like the live one (``emit=False``), so its figures are the ones
``simulate --threshold T`` computes for the same entries: the same code, not a model of it."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from .effects import BatchEffects
from .policies import ThresholdPolicy
from .tiers import TierState
from .warmer import CacheWarmer, load_warmer_state, warmer_state


def parse_shadow_thresholds(spec: str) -> tuple[float, ...]:
    """``0.3,0.4,0.6,0.7`` -> sorted distinct thresholds in [0, 1]; empty: none."""
    values = []
    for part in spec.replace(" ", "").split(","):
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"SKIPCACHE_SHADOW_THRESHOLDS={spec!r}: {part!r} is not a number") from None
        if not 0.0 <= value <= 1.0 or math.isnan(value):
            raise ValueError(f"SKIPCACHE_SHADOW_THRESHOLDS={spec!r}: every threshold must be within [0, 1]")
        values.append(round(value, 6))
    if len(set(values)) > 8:
        raise ValueError(f"SKIPCACHE_SHADOW_THRESHOLDS={spec!r}: at most 8 shadows (each costs a placement's work)")
    return tuple(sorted(set(values)))


def label(threshold: float) -> str:
    """A threshold as metrics, the state and the API name it: ``0.3``, ``0.65``."""
    return f"{threshold:g}"


def shadow_policy(live: ThresholdPolicy, threshold: float) -> ThresholdPolicy:
    """The live policy at another medium threshold; its fast threshold is the live one, raised to
    ``threshold`` if below it (as ``sweep`` does)."""
    return ThresholdPolicy(f"shadow:{label(threshold)}", live.scorer, threshold, max(threshold, live.fast_threshold))


class Shadows:
    """The shadows of one warm shard, by threshold."""

    def __init__(self, live: ThresholdPolicy, thresholds: Sequence[float], tiers: Callable[[], TierState],
                 count_from: float = -math.inf):
        """``tiers``: a new placement of the shard's tracks as the storage has them (each shadow
        starts where the live placement started)."""
        self.warmers: dict[float, CacheWarmer] = {
            t: CacheWarmer(shadow_policy(live, t), tiers(), count_from, columns=[live.scorer], hours=True)
            for t in thresholds}
        self._cost_seen = {t: 0.0 for t in self.warmers}

    def __bool__(self) -> bool:
        return bool(self.warmers)

    def set_live(self, live: ThresholdPolicy) -> None:
        """The live thresholds changed: a shadow keeps its own, with the new fast threshold."""
        for t, w in self.warmers.items():
            w.policy = shadow_policy(live, t)

    def apply(self, entries: Sequence[tuple]) -> None:
        for w in self.warmers.values():
            w.apply(entries)

    def advance(self, ts: float) -> None:
        for w in self.warmers.values():
            w.advance(ts)

    def end(self) -> dict[float, tuple[BatchEffects, float]]:
        """Each shadow's batch: its effects and the storage cost it accrued (not in the effects:
        cost accrues in the totals)."""
        out = {}
        for t, w in self.warmers.items():
            cost = w.figures.cost_area
            out[t] = (w.end(), cost - self._cost_seen[t])
            self._cost_seen[t] = cost
        return out

    def to_state(self) -> dict[str, dict]:
        return {label(t): warmer_state(w) for t, w in self.warmers.items()}

    def load_state(self, state: dict[str, dict]) -> None:
        """Shadows the state has resume; a threshold new to the setting starts empty (its figures
        count from now); one no longer set is dropped."""
        for t, w in self.warmers.items():
            got = state.get(label(t))
            if got is not None:
                load_warmer_state(w, got)
                self._cost_seen[t] = w.figures.cost_area
