"""A policy at work on one shard (one Kafka partition): applies its decisions to the shard's tier
state and keeps its figures.

Every prediction is resolved only when its outcome arrives (a skip, the next play, the session's
end): at play time it is parked in ``pending`` with the score and whether the play hit the cache.

Work happens in batches (``begin`` ... ``end``): counters, decisions and outcomes go to the
batch's ``BatchEffects``, which ``end`` adds to the totals and returns to the caller. What to move
is the policy's call (``cache_warmer/policies/``); applying, evicting and counting is here.
"""
from __future__ import annotations

import math

from models.features import Resolution
from models.labels import FULL

from .decisions import decision
from .effects import BatchEffects, Outcome
from .figures import Figures, confusion_cell
from .policies import CachePolicy
from .tiers import FAST, MEDIUM, SLOW, Move, TierState

SWEEP_EVERY = 3600.0  # seconds of event time between cold sweeps
PENDING_HORIZON = 7 * 86400.0
"""A prediction whose session shows no outcome for this long (event time) is dropped as
abandoned: live traffic without session_end markers would otherwise keep it forever."""


class CacheWarmer:
    def __init__(self, policy: CachePolicy, tiers: TierState, count_from: float = -math.inf,
                 emit: bool = False, keep_scores: bool = True, trace: bool = False):
        """``emit``: hand back decisions and outcomes (the worker publishes and meters them; the
        simulation only needs the counters). ``trace``: also hand back, in the order they
        happened, every play with the tier this shard believed its track in, between the
        decisions (``storage_audit.py`` checks those beliefs against one shared placement)."""
        self.tiers = tiers
        self.policy = policy  # a property: sets the hooks too
        self.count_from = count_from
        self.figures = Figures()
        """Totals. Storage cost and the counted window accrue here directly; counters arrive at
        the end of each batch."""
        self.keep_scores = keep_scores  # the simulation keeps every score for roc_auc; the worker does not
        self.pending: dict[tuple[int, int], tuple] = {}
        self.open_promotions: dict[str, bool] = {}  # promoted, not yet played: track -> counted
        self.emit = emit or trace
        self.trace = trace
        self.effects = BatchEffects(policy.name)
        self.tally = self.effects.figures  # this batch's counters (a short name for the hot path)
        self._last_ts = -math.inf
        self._next_sweep = -math.inf
        self._moves: list[Move] = []

    @property
    def policy(self) -> CachePolicy:
        return self._policy

    @policy.setter
    def policy(self, policy: CachePolicy) -> None:
        self._policy = policy
        kind = type(policy)
        # the hooks the policy has: a play does not pay a call to a hook that only says None
        self._hooks = (policy.played if kind.played is not CachePolicy.played else None,
                       policy.upcoming if kind.upcoming is not CachePolicy.upcoming else None)

    @property
    def transfer_cost(self) -> float:
        return self.tiers.config.transfer_cost

    def begin(self) -> None:
        self.effects = BatchEffects(self.policy.name)
        self.tally = self.effects.figures

    def end(self) -> BatchEffects:
        """Close the batch: add its counters to the totals and hand its effects over."""
        effects = self.effects
        self.figures.merge(effects.figures)
        self.begin()
        return effects

    def advance(self, ts: float) -> None:
        """Integrate storage cost up to ``ts`` and sweep cold tracks once an hour of event time."""
        last = self._last_ts
        if ts <= last:
            return
        f = self.figures  # totals: cost accrues in one sum, whatever the batch size
        if ts > self.count_from:
            start = max(last, self.count_from)
            if start > -math.inf:
                f.cost_area += self.tiers.cost_per_day * (ts - start) / 86400.0
            if math.isnan(f.window_start):
                f.window_start = ts
            f.window_end = ts
        self._last_ts = ts
        if ts >= self._next_sweep:
            # sweeps happen at whole hours of event time, so a shard's result depends on its own
            # events only (not on when another shard's events arrived)
            boundary = (ts // SWEEP_EVERY) * SWEEP_EVERY
            if self._next_sweep > -math.inf:
                if self.policy.manages:
                    self.tiers.demote_cold(boundary, self._moves)
                    self._apply_moves(ts, None)
                self._drop_abandoned(boundary - PENDING_HORIZON)
            self._next_sweep = boundary + SWEEP_EVERY

    def _drop_abandoned(self, horizon: float) -> None:
        """``pending`` is in play-time order (a play first resolves its predecessor), so the
        abandoned ones are at its front."""
        pending = self.pending
        while pending:
            key, entry = next(iter(pending.items()))
            if entry[5] >= horizon:
                break
            del pending[key]
            self.tally.abandoned_predictions += 1

    def on_play(self, user_id: int, session_id: int, track: str, next_track: str | None,
                ts: float, score: float | None, next_score: float | None, variant: str = "A") -> None:
        counted = ts > self.count_from
        shard = self.tiers
        f = self.tally
        tier = shard.tier_of(track)
        if tier != SLOW:
            shard.touch(track, tier, ts)
        promo = self.open_promotions.pop(track, None)
        self.pending[(user_id, session_id)] = (score, tier, promo, counted, variant, ts)
        if self.trace:
            self.effects.trace.append((ts, track, tier, counted))
        if counted:
            f.plays += 1
            row = f.day(ts)
            row[0] += 1
            if tier == FAST:
                f.hits_fast += 1
                row[1] += 1
            elif tier == MEDIUM:
                f.hits_medium += 1
                row[1] += 1
        played, upcoming = self._hooks
        if played is not None:
            want = played(track, tier)
            if want is not None:
                self._apply(want, tier, ts, counted, variant)
        if upcoming is not None and next_track is not None:
            want = upcoming(next_track, next_score)
            if want is not None:
                self._apply(want, shard.tier_of(next_track), ts, counted, variant)

    def _apply(self, want, current: int, ts: float, counted: bool, variant: str) -> None:
        """Promote to the tier wanted, or refresh the track's recency if it already is there."""
        if want.tier > current:
            self._promote(want.track, want.tier, ts, want.reason, want.score, counted, variant)
        elif current != SLOW:
            self.tiers.touch(want.track, current, ts)

    def _promote(self, track: str, tier: int, ts: float, reason: str,
                 score: float | None, counted: bool, variant: str | None = None) -> None:
        shard = self.tiers
        src = shard.tier_of(track)
        shard.move(track, tier, ts, reason, self._moves)
        if counted:
            f = self.tally
            f.promotions += 1
            if tier == FAST:
                f.promotions_fast += 1
            f.day(ts)[4] += 1
        if self.emit:
            d = decision(track, src, tier, reason, score, ts, self.policy.name, variant)
            self.effects.decisions.append(d)
            if self.trace:
                self.effects.trace.append(d)
        self._moves.pop()  # the promotion itself; what is left are evictions it caused
        self.open_promotions[track] = counted
        self._apply_moves(ts, variant)

    def _apply_moves(self, ts: float, variant: str | None) -> None:
        if not self._moves:
            return
        f = self.tally
        counted = ts > self.count_from
        opens = self.open_promotions
        for m in self._moves:
            if counted:
                if m.reason == "cold":
                    f.demotions += 1
                else:
                    f.evictions += 1
            if m.dst == SLOW:
                promo_counted = opens.pop(m.track, None)
                if promo_counted:
                    f.wasted_promotions += 1  # evicted before anyone played it
                    f.day(ts)[5] += 1
            if self.emit:
                d = decision(m.track, m.src, m.dst, m.reason, None, ts, self.policy.name, variant)
                self.effects.decisions.append(d)
                if self.trace:
                    self.effects.trace.append(d)
        self._moves.clear()

    def on_resolution(self, r: Resolution) -> None:
        entry = self.pending.pop((r.user_id, r.session_id), None)
        if entry is None:
            return
        score, tier, promo, counted, variant, _ = entry
        full = r.label == FULL
        f = self.tally
        if promo:  # the first play after a counted promotion decides whether it paid off
            if full:
                f.useful_promotions += 1
            else:
                f.wasted_promotions += 1
                f.day(r.ts)[5] += 1
        if not counted:
            return
        if full:
            f.full_plays += 1
            row = f.day(r.ts)
            row[2] += 1
            if tier != SLOW:
                f.full_play_hits += 1
                row[3] += 1
        if score is not None:
            cell = confusion_cell(score >= 0.5, full)
            setattr(f, cell, getattr(f, cell) + 1)
            by = f.by_variant.get(variant)
            if by is None:
                by = f.by_variant[variant] = {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
            by[cell] += 1
            if self.emit:
                self.effects.outcomes.append(Outcome(variant, cell))
            if self.keep_scores:
                f.scores.append(score)
                f.labels.append(1 if full else 0)


def warmer_state(w: CacheWarmer) -> dict:
    """The warmer's state as plain JSON-able data (counters only: no score lists)."""
    f = w.figures
    return {"tiers": w.tiers.to_state(),
            "pending": [[u, s, *rest] for (u, s), rest in w.pending.items()],
            "open": list(w.open_promotions.items()),
            "figures": {name: getattr(f, name) for name in Figures.COUNTERS},
            "by_variant": f.by_variant,
            "cost_area": f.cost_area, "window": [f.window_start, f.window_end],
            "last_ts": w._last_ts, "next_sweep": w._next_sweep}


def load_warmer_state(w: CacheWarmer, state: dict) -> None:
    w.tiers.load_state(state["tiers"])
    w.pending = {(row[0], row[1]): tuple(row[2:]) for row in state["pending"]}
    w.open_promotions = dict((k, v) for k, v in state["open"])
    for name, value in state["figures"].items():
        setattr(w.figures, name, value)
    w.figures.cost_area = state["cost_area"]
    w.figures.by_variant = state.get("by_variant", {})
    w.figures.window_start, w.figures.window_end = (math.nan if v is None else v for v in state["window"])
    w._last_ts = -math.inf if state["last_ts"] is None else state["last_ts"]
    w._next_sweep = -math.inf if state["next_sweep"] is None else state["next_sweep"]


def policy_figures(warmers: list[CacheWarmer]) -> dict:
    """Figures of one policy over all its shards."""
    policy = warmers[0].policy
    total = Figures()
    for w in warmers:
        total.merge(w.figures)
    out = total.summary(warmers[0].transfer_cost, scored=policy.scored)
    out["pending_unresolved"] = sum(len(w.pending) for w in warmers)
    out["occupancy_end"] = {tier: sum(w.tiers.occupancy()[tier] for w in warmers) for tier in ("fast", "medium")}
    out.update(policy.describe())
    return out
