"""A Kafka partition at work in the live worker: the simulation's pipeline on a PartitionStore.

Per batch: drop what was already applied (offset below the stored one), parse (unreadable events
become dead letters with a reason), load the records the batch needs that are not in memory yet,
run the shared Pipeline, then hand back its effects (decisions, outcomes, counters) and the
changes to commit. ``stream/checkpoint.py`` publishes and flushes first, then commits state and
offset together (at-least-once commands, exactly-once state)."""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import orjson

from cache_warmer.effects import BatchEffects
from cache_warmer.pipeline import Pipeline
from cache_warmer.policies import CachePolicy
from cache_warmer.tiers import TierConfig, TierState
from cache_warmer.warmer import CacheWarmer, load_warmer_state, warmer_state
from models.events import Catalogue, Event
from models.features import EngineConfig, FeatureEngine
from models.parsing import TimeWindow, parse_event
from models.rejections import Rejected, Rejections
from models.state import S_PENDING_TRACK, State, U_SESSION

from .store import Changes, PartitionStore

log = logging.getLogger(__name__)
MAX_EVENT_BYTES = 16_384


@dataclass
class BatchOutput:
    partition: int
    start_offset: int
    next_offset: int
    events: int = 0
    skipped_duplicates: int = 0
    effects: BatchEffects | None = None  # None: no event was applied
    kinds: dict[str, int] = field(default_factory=dict)
    timestamps: list[float] = field(default_factory=list)  # Kafka timestamps (s) when given
    dead_letters: list[tuple[int, str, bytes]] = field(default_factory=list)  # offset, reason, raw
    changes: Changes | None = None


class OffsetGap(Exception):
    """The consumer delivered events after a hole: seek back to ``expected``."""

    def __init__(self, partition: int, expected: int, got: int):
        super().__init__(f"partition {partition}: expected offset {expected}, got {got}")
        self.partition, self.expected, self.got = partition, expected, got


class PartitionRuntime:
    def __init__(self, partition: int, store: PartitionStore, catalogue: Catalogue, scorers: dict,
                 policy: CachePolicy, tier_config: TierConfig, engine_config: EngineConfig,
                 count_from: float = -math.inf, variant_of=None, window: TimeWindow = TimeWindow()):
        self.partition = partition
        self.store = store
        self.catalogue = catalogue
        self.scorers = scorers
        self.policy = policy
        self.tier_config = tier_config
        self.engine_config = engine_config
        self.count_from = count_from
        self.variant_of = variant_of
        self.window = window
        self.rejections = Rejections()
        self.load()

    def load(self) -> None:
        """(Re)build everything from the store: on assignment, and after being fenced."""
        self.stored = self.store.position(self.partition)
        """The offset the store held when loaded; None: it held none (new partition, or lost)."""
        self.next_offset = self.stored or 0
        self.engine = FeatureEngine(self.catalogue, self.engine_config, State(), self.rejections)
        self.warmer = CacheWarmer(self.policy, TierState(self.tier_config, self.catalogue), self.count_from,
                                  emit=True, keep_scores=False)
        blob = self.store.warmer(self.partition)
        if blob:
            load_warmer_state(self.warmer, orjson.loads(blob))
        self.pipeline = Pipeline(self.engine, self.scorers, [self.warmer], variant_of=self.variant_of)

    def start_at(self, offset: int) -> None:
        """Where a partition the store held nothing for starts (see stream/positions.py); a
        rolled-back one keeps the store's offset."""
        self.next_offset = self.store.init_offset(self.partition, offset)

    def set_thresholds(self, threshold: float, fast_threshold: float) -> None:
        self.policy = self.warmer.policy = self.policy.with_thresholds(threshold, fast_threshold)

    def process(self, records: list[tuple[int, bytes | None]]) -> BatchOutput:
        """``records``: (offset, value[, Kafka timestamp in s]) of this partition, in offset order."""
        out = BatchOutput(self.partition, self.next_offset, self.next_offset)
        fresh = [r for r in records if r[0] >= self.next_offset]
        out.skipped_duplicates = len(records) - len(fresh)
        if not fresh:
            return out
        if fresh[0][0] != self.next_offset:
            raise OffsetGap(self.partition, self.next_offset, fresh[0][0])
        events: list[Event] = []
        kinds: dict[str, int] = {}
        check, wall = self.window.check, time.time()
        for offset, value, *kafka_ts in fresh:
            try:
                if value is None:
                    raise Rejected("empty_message")
                if len(value) > MAX_EVENT_BYTES:
                    raise Rejected("too_large", f"{len(value)} bytes")
                try:
                    obj = orjson.loads(value)
                except orjson.JSONDecodeError:
                    raise Rejected("bad_json") from None
                e = check(parse_event(obj), kafka_ts[0] if kafka_ts and kafka_ts[0] else wall)
            except Rejected as r:
                out.dead_letters.append((offset, r.reason, value or b""))
                continue
            events.append(e)
            kinds[e.kind] = kinds.get(e.kind, 0) + 1
        out.next_offset = fresh[-1][0] + 1
        out.timestamps = [ts for _, _, ts in fresh] if len(fresh[0]) > 2 else []
        out.events = len(events)
        self._prefetch(events)
        orphans_before = self.rejections.counts.get("orphan_skip", 0)
        out.effects = effects = self.pipeline.process(events).effects[self.policy.name]
        out.kinds = kinds
        st = self.engine.state
        changes = Changes(
            users={u: st.users[u] for u in st.dirty_users if u in st.users},
            sessions={k: st.sessions[k] for k in st.dirty_sessions if k in st.sessions},
            deleted_sessions=set(st.deleted_sessions),
            tracks={t: st.tracks[t] for t in st.dirty_tracks},
            warmer=orjson.dumps(warmer_state(self.warmer)))
        counters: dict[str, dict[str, float]] = {"events": {k: v for k, v in kinds.items()}}
        rejected: dict[str, float] = {}
        for _, reason, _ in out.dead_letters:
            rejected[reason] = rejected.get(reason, 0) + 1
        orphans = self.rejections.counts.get("orphan_skip", 0) - orphans_before
        if orphans:
            rejected["orphan_skip"] = orphans
        if rejected:
            counters["rejected"] = rejected
        for outcome in effects.outcomes:  # the A/B experiment's counters, exactly-once with the state
            ab = counters.setdefault(f"ab:{outcome.variant}", {})
            ab[outcome.cell] = ab.get(outcome.cell, 0) + 1
        changes.counters = counters
        out.changes = changes
        return out

    def commit(self, out: BatchOutput) -> bool:
        """Write the batch's changes and offset atomically; on a fence, reload from the store."""
        st = self.engine.state
        if out.changes is None:
            if out.next_offset != out.start_offset:  # only duplicates or dead letters: move the offset
                ok = self.store.commit(self.partition, out.start_offset, out.next_offset, Changes())
            else:
                return True
        else:
            ok = self.store.commit(self.partition, out.start_offset, out.next_offset, out.changes)
        st.clear_changes()
        if ok:
            self.next_offset = out.next_offset
            if len(st.users) > 500_000:  # bound memory: everything is in the store
                self.load()
        else:
            log.warning("partition %d: fenced at offset %d (another worker moved on); reloading",
                        self.partition, out.start_offset)
            self.load()
        return ok

    def _prefetch(self, events: list[Event]) -> None:
        st = self.engine.state
        users = list({e.user_id for e in events} - st.users.keys())
        tracks = list({t for e in events for t in (e.track_id, e.next_track_id) if t} - st.tracks.keys())
        sessions = list({(e.user_id, e.session_id) for e in events} - st.sessions.keys())
        if not (users or tracks or sessions):
            return
        got_u, got_s, got_t = self.store.fetch(self.partition, users, sessions, tracks)
        st.users.update(got_u)
        st.sessions.update(got_s)
        st.tracks.update(got_t)
        # sessions still open for users just loaded (the engine may end them)
        more = [(u, s) for u in got_u for s in got_u[u][U_SESSION] if (u, s) not in st.sessions]
        if more:
            got_more = self.store.fetch(self.partition, [], more, [])[1]
            st.sessions.update(got_more)
            got_s.update(got_more)
        # resolving a pending play updates its track, which an earlier batch played
        pending = list({rec[S_PENDING_TRACK] for rec in got_s.values() if rec[S_PENDING_TRACK]} - st.tracks.keys())
        if pending:
            st.tracks.update(self.store.fetch(self.partition, [], [], pending)[2])


def summarize_store(store: PartitionStore, partitions: list[int], policy: CachePolicy, tier_config: TierConfig,
                    catalogue: Catalogue) -> dict:
    """The worker's figures as the simulation reports them, read back from the store."""
    from cache_warmer.warmer import policy_figures

    warmers = []
    for p in partitions:
        w = CacheWarmer(policy, TierState(tier_config, catalogue), keep_scores=False)
        blob = store.warmer(p)
        if blob:
            load_warmer_state(w, orjson.loads(blob))
        warmers.append(w)
    return policy_figures(warmers)
