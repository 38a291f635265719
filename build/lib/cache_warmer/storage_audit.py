"""Pozytywka's storage, as it would really be: one placement per track for the whole catalogue,
with every shard's cache commands applied to it in time order.

Each shard (one per partition of the warm stage) keeps the placement of the tracks it owns. The
audit replays all shards' traces merged by time and counts, at every play, whether the shard
believed the track where the storage held it, what hit ratio the shards report against what the
storage served, and how many commands found the track somewhere other than where they said it
was. Shards keyed by track own disjoint tracks, so all of it must agree at any number of
partitions; the audit is the check (shards keyed by user, before the warm stage existed, drifted
from the storage by 4-7% of plays)."""
from __future__ import annotations

import heapq
from collections.abc import Sequence

from models.events import Catalogue

from .decisions import Decision
from .tiers import SLOW, TIER_OF


class StorageAudit:
    def __init__(self, catalogue: Catalogue):
        self.tier: dict[str, int] = {t: TIER_OF[s.storage_class] for t, s in catalogue.storage.items()
                                     if TIER_OF[s.storage_class] != SLOW}
        self.plays = 0
        self.wrong_beliefs = 0
        self.believed_hits = 0
        self.real_hits = 0
        self.commands = 0
        self.contradicting_commands = 0
        self._commanders: dict[str, set[int]] = {}

    def command(self, shard: int, d: Decision) -> None:
        self.commands += 1
        if self.tier.get(d.track, SLOW) != TIER_OF[d.src]:
            self.contradicting_commands += 1
        dst = TIER_OF[d.dst]
        if dst == SLOW:
            self.tier.pop(d.track, None)
        else:
            self.tier[d.track] = dst
        self._commanders.setdefault(d.track, set()).add(shard)

    def play(self, track: str, believed: int, counted: bool) -> None:
        if not counted:
            return
        actual = self.tier.get(track, SLOW)
        self.plays += 1
        self.believed_hits += believed != SLOW
        self.real_hits += actual != SLOW
        self.wrong_beliefs += believed != actual

    def replay(self, traces: Sequence[list]) -> "StorageAudit":
        """``traces``: each shard's trace (``BatchEffects.trace``, all batches in order)."""
        def keyed(shard: int, trace: list):
            for i, item in enumerate(trace):
                yield (item.time if isinstance(item, Decision) else item[0]), shard, i, item

        for _, shard, _, item in heapq.merge(*(keyed(s, t) for s, t in enumerate(traces))):
            if isinstance(item, Decision):
                self.command(shard, item)
            else:
                self.play(item[1], item[2], item[3])
        return self

    def summary(self) -> dict:
        commanded = len(self._commanders)
        return {
            "plays": self.plays,
            "wrong_belief_share": self.wrong_beliefs / self.plays if self.plays else float("nan"),
            "reported_hit_ratio": self.believed_hits / self.plays if self.plays else float("nan"),
            "storage_hit_ratio": self.real_hits / self.plays if self.plays else float("nan"),
            "commands": self.commands,
            "contradicting_commands": self.contradicting_commands,
            "tracks_commanded": commanded,
            "tracks_commanded_by_several_shards": (sum(1 for s in self._commanders.values() if len(s) > 1) / commanded
                                                   if commanded else float("nan")),
        }
