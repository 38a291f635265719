"""A policy at work on one track shard (one partition of the warm stage): it owns the one
placement of its tracks, applies the policy's wishes to it, evicts, and keeps the cache figures.

Its input is the predict stage's entries (``entries.py``): plays, upcoming tracks with their
scores, and resolved outcomes. A play is parked in ``pending`` with whether it hit the cache
until its outcome arrives (which comes to this shard too: it is about the same track).

Work happens in batches (``begin`` ... ``end``): counters and decisions go to the batch's
``BatchEffects``, which ``end`` adds to the totals and returns to the caller. What to move is the
policy's call (``cache_warmer/policies/``); applying, evicting and counting is here.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from models.labels import FULL

from .decisions import decision
from .effects import BatchEffects
from .entries import PLAY, UPCOMING
from .figures import Figures
from .policies import CachePolicy
from .predictor import PENDING_HORIZON, SWEEP_EVERY, drop_abandoned
from .tiers import FAST, MEDIUM, SLOW, Move, TierState


HOUR = 3600.0
HOURS_KEPT = 24 * 14
"""Hours of event time whose value a warmer keeps (``hours``): the window advice can look back."""


class CacheWarmer:
    def __init__(self, policy: CachePolicy, tiers: TierState, count_from: float = -math.inf,
                 emit: bool = False, trace: bool = False, columns: Sequence[str] = (), hours: bool = False):
        """``columns``: the score columns of the upcoming entries (the policy reads its
        scorer's). ``emit``: hand back decisions (the worker publishes them; the simulation
        only needs the counters). ``trace``: also hand back, in the order they happened, every
        play with the tier this shard believed its track in, between the decisions
        (``storage_audit.py`` checks those beliefs against one shared placement). ``hours``:
        also keep, per hour of event time, [full-play hits, promotions, storage cost] of the
        counted window (``advice.py`` weighs thresholds by them)."""
        self.tiers = tiers
        self.column = list(columns).index(policy.scorer) if policy.scorer in columns else -1
        self.policy = policy  # a property: sets the hooks too
        self.count_from = count_from
        self.figures = Figures()
        """Totals. Storage cost and the counted window accrue here directly; counters arrive at
        the end of each batch."""
        self.pending: dict[tuple[int, int, int], tuple] = {}  # (user, session, play) -> tier, promo, counted, ts
        self.open_promotions: dict[str, bool] = {}  # promoted, not yet played: track -> counted
        self.emit = emit or trace
        self.trace = trace
        self.effects = BatchEffects(policy.name)
        self.tally = self.effects.figures  # this batch's counters (a short name for the hot path)
        self._last_ts = -math.inf
        self._next_sweep = -math.inf
        self._moves: list[Move] = []
        self.hours: dict[int, list] | None = {} if hours else None
        self._hour_at, self._hour_row = None, None

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
        self._last_ts = ts
        count_from = self.count_from
        if ts > count_from:  # (called for nearly every entry: the common path inlined)
            f = self.figures  # totals: cost accrues in one sum, whatever the batch size
            start = last if last >= count_from else count_from
            if start > -math.inf:
                cost = self.tiers.cost_per_day * (ts - start) / 86400.0
                f.cost_area += cost
                if self.hours is not None:
                    row = self._hour_row if ts // HOUR == self._hour_at else self._hour(ts)
                    row[2] += cost
            if f.window_start != f.window_start:  # NaN: the counted window's first event
                f.window_start = ts
            f.window_end = ts
        if ts >= self._next_sweep:
            # sweeps happen at whole hours of event time, so a shard's result depends on its own
            # events only (not on when another shard's events arrived)
            boundary = (ts // SWEEP_EVERY) * SWEEP_EVERY
            if self._next_sweep > -math.inf:
                if self.policy.manages:
                    self.tiers.demote_cold(boundary, self._moves)
                    self._apply_moves(ts, None)
                self.tally.abandoned_plays += drop_abandoned(self.pending, boundary - PENDING_HORIZON)
            self._next_sweep = boundary + SWEEP_EVERY

    def apply(self, entries: Sequence[tuple]) -> None:
        """The predict stage's entries, in event-time order (``entries.py``)."""
        advance, column = self.advance, self.column
        played, upcoming = self._hooks
        for entry in entries:
            kind, ts = entry[1], entry[2]
            if ts > self._last_ts:
                advance(ts)
            if kind == PLAY:
                self.on_play(entry[3], entry[4], entry[5], entry[6], ts, entry[7])
            elif kind == UPCOMING:
                if upcoming is not None:
                    track = entry[3]
                    want = upcoming(track, entry[5][column] if column >= 0 else None)
                    if want is not None:
                        self._apply(want, self.tiers.tier_of(track), ts, ts > self.count_from, entry[4])
            else:
                self.on_resolution(entry[3], entry[4], entry[5], entry[7], ts)

    def on_play(self, user_id: int, session_id: int, play_no: int, track: str, ts: float,
                variant: str = "A") -> None:
        counted = ts > self.count_from
        shard = self.tiers
        f = self.tally
        tier = shard.tier_of(track)
        if tier != SLOW:
            shard.touch(track, tier, ts)
        promo = self.open_promotions.pop(track, None)
        self.pending[(user_id, session_id, play_no)] = (tier, promo, counted, ts)
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
        played = self._hooks[0]
        if played is not None:
            want = played(track, tier)
            if want is not None:
                self._apply(want, tier, ts, counted, variant)

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
            if self.hours is not None:
                self._hour(ts)[1] += 1
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

    def on_resolution(self, user_id: int, session_id: int, play_no: int, label: int, ts: float) -> None:
        entry = self.pending.pop((user_id, session_id, play_no), None)
        if entry is None:
            return
        tier, promo, counted, _ = entry
        full = label == FULL
        f = self.tally
        if promo:  # the first play after a counted promotion decides whether it paid off
            if full:
                f.useful_promotions += 1
            else:
                f.wasted_promotions += 1
                f.day(ts)[5] += 1
        if counted and full:
            f.full_plays += 1
            row = f.day(ts)
            row[2] += 1
            if tier != SLOW:
                f.full_play_hits += 1
                row[3] += 1
                if self.hours is not None:
                    self._hour(ts)[0] += 1

    def _hour(self, ts: float) -> list:
        h = int(ts // HOUR)
        if h == self._hour_at:  # most calls: the hour of the one before
            return self._hour_row
        row = self.hours.get(h)
        if row is None:
            row = self.hours[h] = [0, 0, 0.0]
            if len(self.hours) > HOURS_KEPT:  # hours arrive in time order: the oldest go
                for old in sorted(self.hours)[:len(self.hours) - HOURS_KEPT]:
                    del self.hours[old]
        self._hour_at, self._hour_row = h, row
        return row


def warmer_state(w: CacheWarmer) -> dict:
    """The warmer's state as plain JSON-able data (counters only: no score lists)."""
    f = w.figures
    return {"tiers": w.tiers.to_state(),
            "pending": [[*key, *rest] for key, rest in w.pending.items()],
            "open": list(w.open_promotions.items()),
            "figures": {name: getattr(f, name) for name in Figures.CACHE},
            "cost_area": f.cost_area, "window": [f.window_start, f.window_end],
            "last_ts": w._last_ts, "next_sweep": w._next_sweep,
            **({"hours": [[h, *row] for h, row in sorted(w.hours.items())]} if w.hours is not None else {})}


def load_warmer_state(w: CacheWarmer, state: dict) -> None:
    w.tiers.load_state(state["tiers"])
    w.pending = {(row[0], row[1], row[2]): tuple(row[3:]) for row in state["pending"]}
    w.open_promotions = dict((k, v) for k, v in state["open"])
    for name, value in state["figures"].items():
        setattr(w.figures, name, value)
    w.figures.cost_area = state["cost_area"]
    w.figures.window_start, w.figures.window_end = (math.nan if v is None else v for v in state["window"])
    w._last_ts = -math.inf if state["last_ts"] is None else state["last_ts"]
    w._next_sweep = -math.inf if state["next_sweep"] is None else state["next_sweep"]
    if w.hours is not None:
        w.hours = {int(row[0]): list(row[1:]) for row in state.get("hours", ())}
        w._hour_at = w._hour_row = None


def policy_figures(warmers: list[CacheWarmer], accuracy: Sequence[Figures] = ()) -> dict:
    """Figures of one policy over all its track shards, with the accuracy the predict stage's
    shards measured for its score column (``accuracy``: one ledger's figures per user shard)."""
    policy = warmers[0].policy
    total = Figures()
    for f in (*(w.figures for w in warmers), *accuracy):
        total.merge(f)
    out = total.summary(warmers[0].transfer_cost, scored=policy.scored)
    out["pending_unresolved"] = sum(len(w.pending) for w in warmers)
    out["occupancy_end"] = {tier: sum(w.tiers.occupancy()[tier] for w in warmers) for tier in ("fast", "medium")}
    out.update(policy.describe())
    return out
