"""A partition of the warm stage (the entries topic, keyed by track): the one placement of the
tracks it owns, the policy and thresholds, eviction, costs and cache figures. It publishes the
cache commands for its tracks, so commands for a track come from one place and never contradict.

Exactly once: a predict partition that crashed after publishing re-sends entries it had already
sent. Each entry carries its source (sessions partition, offset); the warm partition keeps, per
source partition, the highest offset it took in (``received``) in the same blob and transaction
as its placement, and drops entries at or below it.

Event time: entries of several predict partitions interleave here, each partition's in order but
not the partitions with each other (one may be a batch or a rebalance behind, which in a replay
at full speed is hours of event time). So the warm partition merges them by event time, as a
stream processor does with a watermark: each source's entries wait in its queue until every
source's clock (every predict batch sends its clock to every warm partition) has passed them, and
are applied in time order. A play then finds the placement as it was at its time, not as a faster
partition's later promotions left it. A source is not waited for once it is idle: more than
``IDLE_SOURCE_SECONDS`` of event time behind the newest, or silent for ``IDLE_WALL_SECONDS`` (the
worker's timer releases what it held back then). With one source this changes nothing."""
from __future__ import annotations

import heapq
import math
import time

import orjson

from cache_warmer.policies import CachePolicy
from cache_warmer.tiers import TierConfig, TierState
from cache_warmer.warmer import CacheWarmer, load_warmer_state, warmer_state
from models.events import Catalogue
from models.rejections import Rejected

from .entry_codec import decode
from .partition_runtime import BatchOutput, PartitionRuntime
from .store import Changes, PartitionStore

IDLE_SOURCE_SECONDS = 86400.0
IDLE_WALL_SECONDS = 10.0


def command_record(decision, models: dict[str, str]) -> tuple[bytes, bytes]:
    payload = decision.to_json()
    payload["model"] = models.get(decision.variant) if decision.variant else None
    return decision.track.encode(), orjson.dumps(payload)


class WarmRuntime(PartitionRuntime):
    stage = "warm"

    def __init__(self, partition: int, store: PartitionStore, catalogue: Catalogue, policy: CachePolicy,
                 tier_config: TierConfig, owns, models: dict[str, str], count_from: float = -math.inf):
        """``owns``: whether a track is this partition's; ``models``: variant -> model name,
        written into every command."""
        self.catalogue = catalogue
        self.policy = policy
        self.tier_config = tier_config
        self.owns = owns
        self.models = models
        self.count_from = count_from
        self.idle_wall_seconds = IDLE_WALL_SECONDS
        super().__init__(partition, store)

    def load_state(self, blob: bytes | None) -> None:
        self.warmer = CacheWarmer(self.policy, TierState(self.tier_config, self.catalogue, self.owns),
                                  self.count_from, emit=True, columns=[self.policy.scorer])
        self.received: dict[int, int] = {}
        """Source (sessions) partition -> the highest offset whose entries were taken in."""
        self.clocks: dict[int, float] = {}
        """Source partition -> the event time it has reached."""
        self.queues: dict[int, list] = {}
        """Source partition -> its entries taken in but not applied yet (ahead of the watermark)."""
        if blob:
            state = orjson.loads(blob)
            load_warmer_state(self.warmer, state)
            self.received = {int(p): o for p, o in state["received"].items()}
            self.clocks = {int(p): t for p, t in state["clocks"].items()}
            self.queues = {int(p): q for p, q in state["queues"].items()}
        self.heard = {p: time.monotonic() for p in self.clocks}  # when each source last sent (this process)

    def watermark(self, now: float | None = None) -> float:
        """The slowest clock of the sources not idle: every entry up to it has arrived."""
        if not self.clocks:
            return -math.inf
        now = time.monotonic() if now is None else now
        newest = max(self.clocks.values())
        waiting = [t for p, t in self.clocks.items()
                   if newest - t <= IDLE_SOURCE_SECONDS and now - self.heard.get(p, now) < self.idle_wall_seconds]
        return min(waiting) if waiting else newest

    def set_thresholds(self, threshold: float, fast_threshold: float) -> None:
        self.policy = self.warmer.policy = self.policy.with_thresholds(threshold, fast_threshold)

    def process(self, records: list[tuple]) -> BatchOutput:
        """With no records: release what idle sources no longer hold back (the worker's timer)."""
        if records:
            return super().process(records)
        out = BatchOutput(self.stage, self.partition, self.next_offset, self.next_offset)
        if any(self.queues.values()):
            self._release(out)
        return out

    def apply(self, records: list[tuple], out: BatchOutput) -> None:
        received, clocks, queues = self.received, self.clocks, self.queues
        now = time.monotonic()
        for offset, value, *_ in records:
            try:
                src, clock, got = decode(value)
            except Rejected as r:
                out.dead_letters.append((offset, r.reason, value or b""))
                continue
            high = received.get(src, -1)
            fresh = [e for e in got if e[0] > high] if got and got[0][0] <= high else got
            out.skipped_duplicates += len(got) - len(fresh)
            if fresh:
                queues.setdefault(src, []).extend(fresh)
                received[src] = fresh[-1][0]
            if clock > clocks.get(src, -math.inf):
                clocks[src] = clock
            self.heard[src] = now
        self._release(out)

    def _release(self, out: BatchOutput) -> None:
        """Apply, in event-time order, every queued entry the watermark has passed."""
        mark = self.watermark()
        ready = []
        for src, queue in self.queues.items():
            n = 0
            while n < len(queue) and queue[n][2] <= mark:
                n += 1
            if n:
                ready.append(queue[:n])
                del queue[:n]
        if ready:
            entries = ready[0] if len(ready) == 1 else list(heapq.merge(*ready, key=_event_time))
            self.warmer.apply(entries)
            out.events += len(entries)
        if math.isfinite(mark):
            self.warmer.advance(mark)
        out.effects = effects = self.warmer.end()
        models = self.models
        for d in effects.decisions:
            out.publish.append(("commands", *command_record(d, models), None))
        state = warmer_state(self.warmer)
        state["received"] = {str(p): o for p, o in self.received.items()}
        state["clocks"] = {str(p): t for p, t in self.clocks.items()}
        state["queues"] = {str(p): q for p, q in self.queues.items() if q}
        rejected: dict[str, float] = {}
        for _, reason, _ in out.dead_letters:
            rejected[f"entries_{reason}"] = rejected.get(f"entries_{reason}", 0) + 1
        out.changes = Changes(blob=orjson.dumps(state), counters={"rejected": rejected} if rejected else {})


def _event_time(entry) -> float:
    return entry[2]
