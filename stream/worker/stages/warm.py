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
partition's later promotions left it. Every sessions partition is a source from the start, heard
from or not. A source is not waited for once it is idle: silent for ``IDLE_WALL_SECONDS`` while
others sent (judged by the messages' Kafka timestamps, so a warm stage that is itself behind does
not take its own lag for silence), or while this partition has read all there is on the broker
(the worker's timer checks then). The timer also reads which sessions partitions hold records
their predict stage has not committed (``behind``): a silent source among them is slow, not idle,
and is waited for up to ``BEHIND_WALL_SECONDS`` (a predict stage that is down must not stop the
cache); one not among them has sent all it has, and is not waited for once quiet for
``CAUGHT_UP_SECONDS`` (the end of a replay, a partition without traffic: what it sends next comes
of records produced after the check, stamped no earlier than what is released now by a producer
in event-time order). Nor is anything held beyond
``MAX_QUEUED_ENTRIES`` (the oldest go). Entries applied behind what was already applied are
counted (``late``), never dropped. With one source this changes nothing."""
from __future__ import annotations

import heapq
import itertools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter

import orjson

from cache_warmer.policies import CachePolicy
from cache_warmer.shadows import Shadows
from cache_warmer.tiers import TierConfig, TierState
from cache_warmer.warmer import CacheWarmer, load_warmer_state, warmer_state
from models.events import Catalogue
from models.parsing import TimeWindow
from models.rejections import Rejected

from stream.worker.stages.entry_codec import OwnMessages, decode, stream_of
from stream.worker.stages.held import STATE_KEY as HELD_KEY, HeldQueues
from stream.worker.stages.partition import BatchOutput, PartitionRuntime
from stream.store import Changes, PartitionStore

log = logging.getLogger(__name__)

IDLE_WALL_SECONDS = 10.0
"""Well above a batch's wait (SKIPCACHE_BATCH_WITHIN) and clock skew between hosts. A source in a
long rebalance can be silent longer: what it sends then comes late (counted)."""
BEHIND_WALL_SECONDS = 60.0
"""How long a silent source with records not predicted yet is waited for (a predict stage down)."""
CAUGHT_UP_SECONDS = 0.25
"""Above a batch's wait (SKIPCACHE_BATCH_WITHIN, 0.1 s): a source that sends is heard from more
often, so a quieter one is checked (``WorkerService.release_idle_entries``): one that has sent
all it has is not waited for (the end of a replay, a partition without traffic), one with
records not predicted yet is (``BEHIND_WALL_SECONDS``). It was 1 s before the check was exact,
which held a replay's last entries for a second."""
SEQUENCE_SLACK = 10_000
"""Offsets past a sessions partition's reported end an entry's sequence may have: Tansu reports
the end as the start of its last record batch + 1 (INFRA.md), so the true end can be a producer
batch further. A forged sequence within it could still make the warm stage drop up to this many
of that source's entries as duplicates; one of 10**12 cannot."""
MAX_QUEUED_ENTRIES = 200_000
"""About 30 MB held back (in the store's per-source lists) while one source lags the others."""


@dataclass(frozen=True)
class SourceEnds:
    """Where a warm partition reads a sessions partition's end offset (None: not known now):
    ``local`` from what this process's consumer fetched (free), ``remote`` from the broker
    (blocking, a round trip)."""

    local: Callable[[int], int | None]
    remote: Callable[[int], int | None]


def command_record(decision, models: dict[str, str]) -> tuple[bytes, bytes]:
    payload = decision.to_json()
    payload["model"] = models.get(decision.variant) if decision.variant else None
    return decision.track.encode(), orjson.dumps(payload)


class WarmRuntime(PartitionRuntime):
    stage = "warm"
    rejected_prefix = "entries_"

    def __init__(self, partition: int, store: PartitionStore, catalogue: Catalogue, policy: CachePolicy,
                 tier_config: TierConfig, owns, models: dict[str, str], sources: int = 1,
                 count_from: float = -math.inf, window: TimeWindow = TimeWindow(),
                 source_ends: SourceEnds | None = None, shadow_thresholds: tuple[float, ...] = (),
                 own: OwnMessages | None = None):
        """``owns``: whether a track is this partition's; ``models``: variant -> model name,
        written into every command; ``sources``: the sessions topic's partitions; ``window``:
        the times the sessions topic believes (entries' clocks are checked against it);
        ``source_ends``: where the sessions partitions' end offsets are read (none in the
        in-memory replay, where nobody produces): an entry's sequence is an offset
        there, so one at or past the end was never sent by that source; ``shadow_thresholds``:
        the shadow placements run beside the live one (``cache_warmer/shadows.py``); ``own``: the
        entries messages this process's predict stage made (taken as made, not parsed again)."""
        self.catalogue = catalogue
        self.policy = policy
        self.tier_config = tier_config
        self.owns = owns
        self.models = models
        self.count_from = count_from
        self.sources = sources
        self.window = window
        self.source_ends = source_ends
        self.shadow_thresholds = tuple(shadow_thresholds)
        self.own = own
        self.ends: dict[int, int] = {}
        """The sessions partitions' end offsets as last read (read again only for an entry past them)."""
        self.idle_wall_seconds = IDLE_WALL_SECONDS
        self.max_queued = MAX_QUEUED_ENTRIES
        self.idle: set[int] = set()  # sources not waited for now (logged as they go and come back)
        self.behind: set[int] | None = None
        """Sources whose sessions partitions hold records not committed by predict (set by the
        worker's timer; None where nobody knows, e.g. the in-memory replay)."""
        super().__init__(partition, store)

    def load_state(self, blob: bytes | None) -> None:
        tiers = lambda: TierState(self.tier_config, self.catalogue, self.owns)  # noqa: E731
        self.warmer = CacheWarmer(self.policy, tiers(), self.count_from, emit=True, columns=[self.policy.scorer],
                                  hours=True)
        self.shadows = Shadows(self.policy, self.shadow_thresholds, tiers, self.count_from)
        self.received: dict[int, int] = {}
        """Stream -> the highest offset whose entries were taken in. A stream is a source's own
        entries (the sessions partition's number) or those of events another partition
        forwarded to it (``entry_codec.stream_of``): each is one partition's offsets, in order."""
        self.clocks: dict[int, float] = {}
        """Source partition -> the event time it has reached."""
        self.queues: dict[int, list] = {}
        """Source partition -> its entries taken in but not applied yet (ahead of the watermark).
        Stored apart from the blob (``held.py``): a source that lags does not make every commit
        rewrite all that is held back."""
        self.held = HeldQueues()
        self.applied_until = -math.inf
        """The newest event time applied: an entry older than it is applied late (out of order)."""
        self.late = 0
        """Entries applied late so far: a source released as idle that was not, in fact."""
        if blob:
            state = orjson.loads(blob)
            load_warmer_state(self.warmer, state)
            self.received = {int(p): o for p, o in state["received"].items()}
            self.clocks = {int(p): t for p, t in state["clocks"].items()}
            if "queues" in state:  # the layout before the queues had keys of their own: move them there
                self.queues = {int(p): q for p, q in state["queues"].items()}
                self.held.pushed = {p: list(q) for p, q in self.queues.items()}
            else:
                self.queues = self.held.load(self.store, self.partition, state, "queued")
            self.applied_until = state.get("applied_until", -math.inf)
            self.late = state.get("late", 0)
            self.shadows.load_state(state.get("shadows", {}))
        self._cost_seen = self.warmer.figures.cost_area
        self.heard: dict[int, float] = {}
        """Source -> when it last sent (Kafka timestamp), since this partition was loaded."""
        self.stream_time = -math.inf
        """The newest Kafka timestamp read: "now" for a partition working through a backlog."""
        self.since = time.time()
        """When this partition began to listen (the first timestamp it read, else the wall clock):
        a source not heard from since counts as heard then."""

    def watermark(self, now: float | None = None, drained: bool = False) -> float:
        """The slowest clock of the sources not idle at ``now`` (default: stream time): every
        entry up to it has arrived. ``drained``: this partition has read all its topic holds."""
        now = self.stream_time if now is None else now
        clocks, limit = self.clocks, self.idle_wall_seconds
        heard = self._last_heard()
        behind = self.behind or set()
        caught_up = min(limit, CAUGHT_UP_SECONDS) if drained and self.behind is not None else limit
        slow = BEHIND_WALL_SECONDS if limit else 0.0
        idle = {p for p, t in heard.items() if now - t >= (slow if p in behind else caught_up)}
        if idle != self.idle:
            for p in sorted(idle - self.idle):
                log.info("warm partition %d: sessions partition %d silent for %.0f s%s; not waiting for it",
                         self.partition, p, now - heard[p], " with records not predicted" if p in behind else "")
            for p in sorted(self.idle - idle):
                log.info("warm partition %d: sessions partition %d sends again", self.partition, p)
            self.idle = idle
        waiting = [clocks.get(p, -math.inf) for p in heard if p not in idle]
        if waiting:
            return min(waiting)
        return max(clocks.values(), default=-math.inf)

    def waits_on_quiet_source(self, now: float) -> bool:
        """Entries held back while a source has been quiet for ``CAUGHT_UP_SECONDS``: only then
        does the worker need to know which sources are behind (reading it costs a round trip)."""
        return any(self.queues.values()) and bool(self.quiet_sources(now))

    def quiet_sources(self, now: float, seconds: float = CAUGHT_UP_SECONDS) -> set[int]:
        """The sources not heard from for ``seconds``."""
        return {p for p, t in self._last_heard().items() if now - t >= seconds}

    def _last_heard(self) -> dict[int, float]:
        """Every source (each sessions partition, and any other that sent) -> when it last sent."""
        heard, since = self.heard, self.since
        return {p: heard.get(p, since) for p in range(max(self.sources, max(self.clocks, default=-1) + 1))}

    def set_thresholds(self, threshold: float, fast_threshold: float) -> None:
        self.policy = self.warmer.policy = self.policy.with_thresholds(threshold, fast_threshold)
        self.shadows.set_live(self.policy)

    def process(self, records: list[tuple]) -> BatchOutput:
        """With no records: the worker's timer, for a partition that has read everything there
        is; release what sources silent since (wall clock) no longer hold back."""
        if records:
            return super().process(records)
        out = BatchOutput(self.stage, self.partition, self.next_offset, self.next_offset)
        if any(self.queues.values()):
            self._release(out, time.time(), drained=True)
        return out

    def apply(self, records: list[tuple], out: BatchOutput) -> None:
        received, clocks, queues, heard = self.received, self.clocks, self.queues, self.heard
        wall = time.time()
        sources, window, asked, own = self.sources, self.window, {}, self.own
        for offset, value, *kafka_ts in records:
            sent = kafka_ts[0] if kafka_ts and kafka_ts[0] else wall
            try:
                src, clock, got, origins = decode(value, sources, sent, window, own)
                if origins is None:
                    if got and got[-1][0] >= self.ends.get(src, -1) and self.source_ends is not None:
                        self._check_sequence(src, got[-1][0], asked)
                elif self.source_ends is not None:
                    for origin, seq in _last_seqs(got, origins).items():  # whose offsets the sequences are
                        seqs_of = src if origin < 0 else origin
                        if seq >= self.ends.get(seqs_of, -1):
                            self._check_sequence(seqs_of, seq, asked)
            except Rejected as r:
                out.reject(offset, r.reason, value, r.detail)
                continue
            if origins is None:
                high = received.get(src, -1)
                fresh = [e for e in got if e[0] > high] if got and got[0][0] <= high else got
                if fresh:
                    received[src] = fresh[-1][0]
            else:
                fresh = self._fresh(src, got, origins)
            out.skipped_duplicates += len(got) - len(fresh)
            if fresh:
                queues.setdefault(src, []).extend(fresh)
                self.held.pushed.setdefault(src, []).extend(fresh)
            if clock > clocks.get(src, -math.inf):
                clocks[src] = clock
            if self.stream_time == -math.inf:  # the first message read since loading
                self.since = sent
            if sent > heard.get(src, -math.inf):
                heard[src] = sent
            if sent > self.stream_time:
                self.stream_time = sent
        self._release(out)

    def _fresh(self, src: int, entries: list, origins: list[int]) -> list:
        """The entries not taken in yet, each by the sequence of its origin (events another
        partition forwarded to ``src``)."""
        received, sources, fresh = self.received, self.sources, []
        before: dict[int, int] = {}  # as the message found them: one event's entries share a sequence
        for entry, origin in zip(entries, origins):
            stream = stream_of(src, None if origin < 0 else origin, sources)
            high = before.get(stream)
            if high is None:
                high = before[stream] = received.get(stream, -1)
            if entry[0] > high:
                fresh.append(entry)
                received[stream] = entry[0]
        return fresh

    def _check_sequence(self, src: int, seq: int, asked: dict[int, int | None]) -> None:
        """Rejected unless ``seq`` is below sessions partition ``src``'s end offset (give or take
        ``SEQUENCE_SLACK``): the one this process's consumer knows, else the broker's, read once
        per batch and source (a reading taken now is past every entry of the batch its source
        really sent: each was produced after its sessions record was). Unknown (the broker
        away): taken unchecked."""
        end = self.source_ends.local(src)
        if end is None or seq >= end + SEQUENCE_SLACK:
            if src not in asked:
                asked[src] = self.source_ends.remote(src)
            end = asked[src]
            if end is not None and seq >= end + SEQUENCE_SLACK:
                raise Rejected("sequence_beyond_source", f"entry sequence {seq:,} is past the end of sessions "
                               f"partition {src} ({end:,} records)")
        if end is not None and end > self.ends.get(src, -1):
            self.ends[src] = end

    def _release(self, out: BatchOutput, now: float | None = None, drained: bool = False) -> None:
        """Apply, in event-time order, every queued entry the watermark has passed."""
        mark = self.watermark(now, drained)
        queued = sum(len(q) for q in self.queues.values())
        if queued > self.max_queued:  # a source lags too far to wait for: the oldest entries go
            times = heapq.merge(*([e[2] for e in q] for q in self.queues.values()))
            mark = max(mark, next(itertools.islice(times, queued - self.max_queued - 1, None)))
        ready = []
        for src, queue in self.queues.items():
            n = 0
            while n < len(queue) and queue[n][2] <= mark:
                n += 1
            if n:
                ready.append(queue[:n])
                del queue[:n]
                self.held.dropped[src] = self.held.dropped.get(src, 0) + n
        if ready:
            entries = ready[0] if len(ready) == 1 else merge_by_time(ready)
            if entries[0][2] < self.applied_until:
                out.late_entries = sum(1 for e in entries if e[2] < self.applied_until)
                self.late += out.late_entries
            self.applied_until = max(self.applied_until, entries[-1][2])
            self.warmer.apply(entries)
            self.shadows.apply(entries)
            out.events += len(entries)
        if math.isfinite(mark):
            self.warmer.advance(mark)
            self.shadows.advance(mark)
        out.effects = effects = self.warmer.end()
        cost = self.warmer.figures.cost_area
        out.storage_cost, self._cost_seen = cost - self._cost_seen, cost
        if self.shadows:
            out.shadows = self.shadows.end()
        models = self.models
        for d in effects.decisions:
            out.publish.append(("commands", *command_record(d, models), None))
        state = warmer_state(self.warmer)
        state["received"] = {str(p): o for p, o in self.received.items()}
        state["clocks"] = {str(p): t for p, t in self.clocks.items()}
        state["late"] = self.late
        if self.shadows:
            state["shadows"] = self.shadows.to_state()
        if math.isfinite(self.applied_until):
            state["applied_until"] = self.applied_until
        rejected = self.rejected_counts(out)
        push, drop, state[HELD_KEY] = self.held.changes()
        out.changes = Changes(blob=orjson.dumps(state), counters={"rejected": rejected} if rejected else {},
                              queue_push=push, queue_drop=drop)

    def committed(self, ok: bool) -> None:
        self.held.committed(ok)


def _last_seqs(entries: list, origins: list[int]) -> dict[int, int]:
    """Each origin's last sequence in a message."""
    return {origin: entry[0] for entry, origin in zip(entries, origins)}


_event_time = itemgetter(2)  # an entry's event time


def merge_by_time(runs: list[list]) -> list:
    """The runs' entries in ``heapq.merge``'s order by event time: each run's own order kept, and
    among equal times the earlier run's first. When every run is in time order already (a run is
    not when a skip that came before its play resolved the play at the skip's later time), a
    stable sort of them all, in C, gives the same order at a fraction of the generator's cost."""
    for run in runs:
        times = list(map(_event_time, run))
        if times != sorted(times):
            return list(heapq.merge(*runs, key=_event_time))
    return sorted(itertools.chain.from_iterable(runs), key=_event_time)
