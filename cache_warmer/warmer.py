"""A policy at work: applies its decisions to the tier state of each shard and keeps its figures.

Every prediction is resolved only when its outcome arrives (a skip, the next play, the session's
end): at play time it is parked in ``pending`` with the score and whether the play hit the cache.
"""
from __future__ import annotations

import math

from models.features import Resolution
from models.labels import FULL

from .decisions import Decision, decision
from .figures import Figures
from .policies import Policy
from .tiers import FAST, MEDIUM, SLOW, Move, TierConfig, TierState

SWEEP_EVERY = 3600.0  # seconds of event time between cold sweeps


class CacheWarmer:
    def __init__(self, policy: Policy, tiers: list[TierState], count_from: float = -math.inf,
                 emit: bool = False):
        self.policy = policy
        self.shards = tiers
        self.count_from = count_from
        self.figures = Figures()
        self.pending: dict[tuple[int, int], tuple] = {}
        self.open_promotions: list[dict[str, bool]] = [{} for _ in tiers]  # track -> counted
        self.emit = emit
        self.decisions: list[Decision] = []
        self._last_ts = -math.inf
        self._next_sweep = -math.inf
        self._moves: list[Move] = []

    @property
    def transfer_cost(self) -> float:
        return self.shards[0].config.transfer_cost

    def advance(self, ts: float) -> None:
        """Integrate storage cost up to ``ts`` and sweep cold tracks once an hour of event time."""
        last = self._last_ts
        if ts <= last:
            return
        f = self.figures
        if ts > self.count_from:
            start = max(last, self.count_from)
            if start > -math.inf:
                f.cost_area += sum(s.cost_per_day for s in self.shards) * (ts - start) / 86400.0
            if math.isnan(f.window_start):
                f.window_start = ts
            f.window_end = ts
        self._last_ts = ts
        if self.policy.manages and ts >= self._next_sweep:
            if self._next_sweep > -math.inf:
                for i, shard in enumerate(self.shards):
                    shard.demote_cold(ts, self._moves)
                    self._apply_moves(i, ts, None)
            self._next_sweep = ts + SWEEP_EVERY

    def on_play(self, shard_no: int, user_id: int, session_id: int, track: str, next_track: str | None,
                ts: float, score: float | None, next_score: float | None) -> None:
        counted = ts > self.count_from
        shard = self.shards[shard_no]
        f = self.figures
        tier = shard.tier_of(track)
        if tier != SLOW:
            shard.touch(track, tier, ts)
        promo = self.open_promotions[shard_no].pop(track, None)
        self.pending[(user_id, session_id)] = (score, tier, promo, counted)
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
        kind = self.policy.kind
        if kind == "static":
            return
        if kind == "lru":
            if tier == SLOW:
                self._promote(shard_no, track, MEDIUM, ts, "played", None, counted)
        elif next_track is not None:
            if kind == "promote_all":
                target = MEDIUM
            else:
                target = self.policy.target(next_score)
            if target != SLOW:
                current = shard.tier_of(next_track)
                if target > current:
                    self._promote(shard_no, next_track, target, ts, "upcoming", next_score, counted)
                elif current != SLOW:
                    shard.touch(next_track, current, ts)

    def _promote(self, shard_no: int, track: str, tier: int, ts: float, reason: str,
                 score: float | None, counted: bool) -> None:
        shard = self.shards[shard_no]
        src = shard.tier_of(track)
        shard.move(track, tier, ts, reason, self._moves)
        if counted:
            f = self.figures
            f.promotions += 1
            if tier == FAST:
                f.promotions_fast += 1
            f.day(ts)[4] += 1
        if self.emit:
            self.decisions.append(decision(track, src, tier, reason, score, ts, self.policy.name))
        self._moves.pop()  # the promotion itself; what is left are evictions it caused
        self.open_promotions[shard_no][track] = counted
        self._apply_moves(shard_no, ts, score)

    def _apply_moves(self, shard_no: int, ts: float, score: float | None) -> None:
        if not self._moves:
            return
        f = self.figures
        counted = ts > self.count_from
        opens = self.open_promotions[shard_no]
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
                self.decisions.append(decision(m.track, m.src, m.dst, m.reason, None, ts, self.policy.name))
        self._moves.clear()

    def on_resolution(self, r: Resolution) -> None:
        entry = self.pending.pop((r.user_id, r.session_id), None)
        if entry is None:
            return
        score, tier, promo, counted = entry
        full = r.label == FULL
        f = self.figures
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
            predicted_full = score >= 0.5
            if predicted_full:
                if full:
                    f.tp += 1
                else:
                    f.fp += 1
            elif full:
                f.fn += 1
            else:
                f.tn += 1
            f.scores.append(score)
            f.labels.append(1 if full else 0)

    def summary(self) -> dict:
        out = self.figures.summary(self.transfer_cost, scored=self.policy.kind == "score"
                                   and self.policy.scorer not in ("oracle",))
        out["pending_unresolved"] = len(self.pending)
        out["occupancy_end"] = {"fast": sum(s.occupancy()["fast"] for s in self.shards),
                                "medium": sum(s.occupancy()["medium"] for s in self.shards)}
        if self.policy.kind == "score":
            out["threshold"] = self.policy.threshold
            out["fast_threshold"] = self.policy.fast_threshold
        return out


def build_shards(config: TierConfig, catalogue, shards: int) -> list[TierState]:
    per_shard = config.split(shards)
    return [TierState(per_shard, catalogue) for _ in range(shards)]
