"""Storage tiers and their state: which track sits where, LRU order, and what it costs per day.

Eviction rule: a full tier evicts its least recently used track (last played or promoted);
a track evicted from fast moves to medium (which may evict in turn), one evicted from medium
moves to slow. A promoted track unused for ``cold_after_hours`` of event time is demoted to slow.
"""
from __future__ import annotations

import math
import statistics
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from models.events import Catalogue

SLOW, MEDIUM, FAST = 0, 1, 2
TIER_NAMES = ("slow", "medium", "fast")
TIER_OF = {name: i for i, name in enumerate(TIER_NAMES)}
DEFAULT_DAILY_COST = (0.011, 0.021, 0.087)  # medians of 23Z's track_storage


@dataclass(frozen=True)
class TierConfig:
    fast_capacity: int
    medium_capacity: int
    tier_cost: tuple[float, float, float] = DEFAULT_DAILY_COST
    transfer_cost: float = 0.0005
    cold_after_hours: float = 1.0

    @classmethod
    def for_catalogue(cls, catalogue: Catalogue, fast_capacity: int = 0, medium_capacity: int = 0,
                      transfer_cost: float = 0.0005, cold_after_hours: float = 1.0,
                      n_tracks: int = 0) -> "TierConfig":
        """Defaults relative to the catalogue: fast holds 1% of the tracks, medium 10% (never less
        than what track_storage already puts there); per-tier costs are the medians of
        track_storage, or 23Z's medians when it is missing."""
        n = max(len(catalogue.storage), len(catalogue.tracks), n_tracks, 100)
        start = [0, 0, 0]
        costs: list[list[float]] = [[], [], []]
        for s in catalogue.storage.values():
            t = TIER_OF[s.storage_class]
            start[t] += 1
            costs[t].append(s.daily_cost)
        tier_cost = tuple(statistics.median(c) if c else DEFAULT_DAILY_COST[i] for i, c in enumerate(costs))
        return cls(fast_capacity=fast_capacity or max(math.ceil(0.01 * n), start[FAST]),
                   medium_capacity=medium_capacity or max(math.ceil(0.10 * n), start[MEDIUM]),
                   tier_cost=tier_cost, transfer_cost=transfer_cost, cold_after_hours=cold_after_hours)

    def split(self, shards: int) -> "TierConfig":
        """The capacity of one of ``shards`` track shards (one per partition of the warm stage):
        hashing track ids spreads the catalogue, and the plays, evenly over them."""
        if shards <= 1:
            return self
        return TierConfig(max(1, self.fast_capacity // shards), max(1, self.medium_capacity // shards),
                          self.tier_cost, self.transfer_cost, self.cold_after_hours)


@dataclass(slots=True)
class Move:
    track: str
    src: int
    dst: int
    reason: str


class TierState:
    """One shard's placement of its tracks. Tracks not listed are where track_storage put them."""

    def __init__(self, config: TierConfig, catalogue: Catalogue, owns: Callable[[str], bool] | None = None):
        """``owns``: whether a track is this shard's (None: every track is); the shard places,
        and pays for, only its own."""
        self.config = config
        self.storage = catalogue.storage if owns is None else {
            t: s for t, s in catalogue.storage.items() if owns(t)}
        self.tier: dict[str, int] = {}
        self.lru: tuple[OrderedDict, OrderedDict, OrderedDict] = (OrderedDict(), OrderedDict(), OrderedDict())
        self.capacity = (math.inf, config.medium_capacity, config.fast_capacity)
        self.cost_per_day = 0.0
        self._cost_cache: dict[str, tuple[float, float, float]] = {}
        for track, s in self.storage.items():
            t = TIER_OF[s.storage_class]
            self.cost_per_day += s.daily_cost
            if t != SLOW:
                self.tier[track] = t
                self.lru[t][track] = -math.inf
        self.seen_outside_catalogue: set[str] = set()

    def tier_of(self, track: str) -> int:
        t = self.tier.get(track)
        if t is None:
            if track not in self.storage and track not in self.seen_outside_catalogue:
                # not in track_storage: slow at the median slow cost, counted from first sight
                self.seen_outside_catalogue.add(track)
                self.cost_per_day += self.config.tier_cost[SLOW]
            return SLOW
        return t

    def cost(self, track: str, tier: int) -> float:
        s = self.storage.get(track)
        if s is not None and TIER_OF[s.storage_class] == tier:
            return s.daily_cost
        return self.config.tier_cost[tier]

    def touch(self, track: str, tier: int, ts: float) -> None:
        lru = self.lru[tier]
        last = lru.get(track)
        if last is not None:
            lru[track] = ts if ts > last else last  # the latest use, even if told of it late
            lru.move_to_end(track)

    def move(self, track: str, dst: int, ts: float, reason: str, moves: list[Move]) -> None:
        """Put ``track`` in ``dst``, evicting LRU tracks from full tiers; append every move."""
        src = self.tier_of(track)
        if src == dst:
            return
        if src != SLOW:
            del self.lru[src][track]
        if dst != SLOW:
            lru = self.lru[dst]
            while len(lru) >= self.capacity[dst]:
                victim, _ = lru.popitem(last=False)
                self._place(victim, dst, dst - 1)
                moves.append(Move(victim, dst, dst - 1, "evicted"))
                if dst - 1 != SLOW:
                    self._make_room(dst - 1, moves)
                    self.lru[dst - 1][victim] = ts
            lru[track] = ts
        self._place(track, src, dst)
        moves.append(Move(track, src, dst, reason))

    def _make_room(self, tier: int, moves: list[Move]) -> None:
        lru = self.lru[tier]
        while len(lru) >= self.capacity[tier]:
            victim, _ = lru.popitem(last=False)
            self._place(victim, tier, tier - 1)
            moves.append(Move(victim, tier, tier - 1, "evicted"))

    def _place(self, track: str, src: int, dst: int) -> None:
        self.cost_per_day += (self.cost(track, dst) - self.cost(track, src))
        if dst == SLOW:
            self.tier.pop(track, None)
        else:
            self.tier[track] = dst

    def demote_cold(self, now: float, moves: list[Move]) -> None:
        """Demote to slow what has not been used for ``cold_after_hours``."""
        horizon = now - self.config.cold_after_hours * 3600.0
        for tier in (FAST, MEDIUM):
            lru = self.lru[tier]
            while lru:
                track, last = next(iter(lru.items()))
                if last >= horizon:
                    break
                lru.popitem(last=False)
                self._place(track, tier, SLOW)
                moves.append(Move(track, tier, SLOW, "cold"))

    def to_state(self) -> dict:
        """What must survive a restart (the worker keeps it in Redis)."""
        return {"medium": list(self.lru[MEDIUM].items()), "fast": list(self.lru[FAST].items()),
                "cost": self.cost_per_day, "outside": list(self.seen_outside_catalogue)}

    def load_state(self, state: dict) -> None:
        self.tier.clear()
        for t, name in ((MEDIUM, "medium"), (FAST, "fast")):
            lru = self.lru[t]
            lru.clear()
            for track, last in state[name]:
                lru[track] = -math.inf if last is None else last
                self.tier[track] = t
        self.cost_per_day = state["cost"]
        self.seen_outside_catalogue = set(state["outside"])

    def occupancy(self) -> dict[str, int]:
        return {"fast": len(self.lru[FAST]), "medium": len(self.lru[MEDIUM])}
