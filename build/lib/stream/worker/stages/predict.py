"""A partition of the predict stage (``pozytywka.sessions``, keyed by user): parse, features,
scores, the A/B variant and the accuracy of resolved predictions, on the partition's users and
sessions in the store. Its entries for the warm stage leave as one message per warm partition.

Track counts are global: a batch reads every partition's committed counts of its tracks, adds its
own plays as it goes, and commits its additions with its offset (exactly once). A play's track
features therefore miss only the plays other partitions have in batches not committed yet (at
most one batch each, i.e. ``SKIPCACHE_BATCH_WITHIN`` seconds of traffic at low rates); the
simulation follows the same rule (``cache_warmer/simulation.py``)."""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import orjson

from cache_warmer.entries import route
from cache_warmer.predictor import PredictionLedger, Predictor
from models.events import PLAY, Catalogue, Event
from models.features import EngineConfig, FeatureEngine
from models.parsing import TimeWindow, parse_event
from models.rejections import Rejected, Rejections
from models.state import S_PENDING_TRACK, State, U_SESSION

from stream.worker.stages.entry_codec import encode
from stream.worker.stages.partition import BatchOutput, PartitionRuntime
from stream.store import Changes, PartitionStore

MAX_EVENT_BYTES = 16_384
MAX_USERS_IN_MEMORY = 500_000
MISROUTED_LOG_EVERY = 60.0
"""Seconds between a partition's log lines about events of users that belong elsewhere."""
log = logging.getLogger("skipcache.predict")


class PredictRuntime(PartitionRuntime):
    stage = "predict"

    def __init__(self, partition: int, store: PartitionStore, catalogue: Catalogue, scorers: dict,
                 column: str, engine_config: EngineConfig, warm_partitions: int,
                 track_partition: Callable[[str], int], count_from: float = -math.inf, variant_of=None,
                 window: TimeWindow = TimeWindow(), user_partition: Callable[[int], int] | None = None):
        """``column``: the score the warm stage's policy reads (``A``, or ``ab`` for an A/B
        test); ``track_partition``: a track's warm partition; ``user_partition``: the sessions
        partition a user's events are keyed to (the contract), to find producers that key
        otherwise."""
        self.catalogue = catalogue
        self.scorers = scorers
        self.column = column
        self.engine_config = engine_config
        self.warm_partitions = warm_partitions
        self.track_partition = track_partition
        self.count_from = count_from
        self.variant_of = variant_of
        self.window = window
        self.user_partition = user_partition
        self.rejections = Rejections()
        self._misrouted_logged = -math.inf
        super().__init__(partition, store)

    def load_state(self, blob: bytes | None) -> None:
        self.engine = FeatureEngine(self.catalogue, self.engine_config, State(track_delta={}), self.rejections)
        ledger = PredictionLedger([self.column], self.count_from, outcomes_of=self.column)
        self.sent: dict[int, int] = {}
        """Warm partition -> the offset of the last event whose entries went there: the warm
        stage has all of this partition's committed entries once it applied that far."""
        self.clock = -math.inf
        """The event time of the newest event applied: how far this partition has come."""
        if blob:
            state = orjson.loads(blob)
            ledger.load_state(state["ledger"])
            self.sent = {int(q): seq for q, seq in state["sent"].items()}
            self.clock = state.get("clock", -math.inf)
        self.engine.watch(ledger.pending)  # the pending plays come under the session-gap rule again
        if blob:
            self.engine.load_held(state.get("held", []))
        self.predictor = Predictor(self.engine, self.scorers, [self.column], variant_of=self.variant_of,
                                   ledger=ledger)

    def process(self, records: list[tuple]) -> BatchOutput:
        """With no records: the partition is waiting for the others to come level in event time
        (``scheduler.py``), not idle; it tells every warm partition its clock, so the warm stage
        keeps waiting for it rather than taking its silence for idleness."""
        if records or not math.isfinite(self.clock):
            return super().process(records)
        out = BatchOutput(self.stage, self.partition, self.next_offset, self.next_offset)
        for q in range(self.warm_partitions):
            out.publish.append(("entries", None, encode(self.partition, self.clock, []), q))
        return out

    def decode(self, records: list[tuple]) -> list[tuple]:
        """``(offset, value, Kafka timestamp, Event or Rejected)`` of each record: the worker
        decodes a run when it arrives, to apply partitions in event-time order (``scheduler.py``)."""
        out = []
        check, wall = self.window.check, time.time()
        loads, decode_error = orjson.loads, orjson.JSONDecodeError
        for offset, value, *kafka_ts in records:
            ts = kafka_ts[0] if kafka_ts else None
            try:
                if value is None:
                    raise Rejected("empty_message")
                if len(value) > MAX_EVENT_BYTES:
                    raise Rejected("too_large", f"{len(value)} bytes")
                try:
                    obj = loads(value)
                except decode_error:
                    raise Rejected("bad_json") from None
                item = check(parse_event(obj), ts or wall)
            except Rejected as r:
                item = r
            out.append((offset, value, ts, item))
        return out

    def apply(self, records: list[tuple], out: BatchOutput) -> None:
        events: list[Event] = []
        offsets: list[int] = []
        kinds = out.kinds
        for offset, value, _, item in (records if len(records[0]) > 3 else self.decode(records)):
            if type(item) is Event:
                events.append(item)
                offsets.append(offset)
                kinds[item.kind] = kinds.get(item.kind, 0) + 1
            else:
                out.reject(offset, item.reason, value, item.detail)
        out.events = len(events)
        contract = self._contract(events)
        self._prefetch(events)
        orphans_before = self.rejections.counts.get("orphan_skip", 0)
        repaired_before = dict(self.engine.repaired)
        predicted = self.predictor.process(events, offsets)
        out.outcomes = predicted.outcomes
        self._sending = sent = dict(self.sent)
        self._clock = self.clock
        if events:  # every warm partition hears of every batch: its entries, or at least its clock
            clock = max(e.ts for e in events)
            self._clock = max(clock, self.clock)
            for q, entries in enumerate(route(predicted.entries, self.track_partition, self.warm_partitions)):
                out.publish.append(("entries", None, encode(self.partition, clock, entries), q))
                if entries:
                    sent[q] = entries[-1][0]
        st = self.engine.state
        counters: dict[str, dict[str, float]] = {"events": dict(kinds)}
        rejected = self.rejected_counts(out)
        orphans = self.rejections.counts.get("orphan_skip", 0) - orphans_before
        if orphans:
            rejected["orphan_skip"] = orphans
        if rejected:
            counters["rejected"] = rejected
        for how, n in self.engine.repaired.items():
            if n > repaired_before.get(how, 0):
                contract[how] = n - repaired_before.get(how, 0)
        if contract:
            counters["contract"] = contract
        for outcome in predicted.outcomes:  # the A/B experiment's counters, exactly-once with the state
            ab = counters.setdefault(f"ab:{outcome.variant}", {})
            ab[outcome.cell] = ab.get(outcome.cell, 0) + 1
        out.changes = Changes(
            users={u: st.users[u] for u in st.dirty_users if u in st.users},
            sessions={k: st.sessions[k] for k in st.dirty_sessions if k in st.sessions},
            deleted_sessions=set(st.deleted_sessions),
            tracks=dict(st.track_delta),
            blob=orjson.dumps({"ledger": self.predictor.ledger.to_state(), "sent": {str(q): o for q, o in sent.items()},
                               **({"held": held} if (held := self.engine.held_state()) else {}),
                              **({"clock": self._clock} if math.isfinite(self._clock) else {})}),
            counters=counters)

    def _contract(self, events: list[Event]) -> dict[str, int]:
        """What the producers did not send as the contract asks (README, Producing session
        events): plays with no upcoming track, events keyed to another user's partition."""
        out: dict[str, int] = {}
        missing = sum(1 for e in events if e.kind == PLAY and e.next_track_id is None)
        if missing:
            out["plays_without_upcoming"] = missing
        if self.user_partition is not None:
            mine, where = self.partition, self.user_partition
            elsewhere = [e.user_id for e in events if where(e.user_id) != mine]
            if elsewhere:
                out["misrouted:wrong_partition"] = len(elsewhere)
                now = time.monotonic()
                if now - self._misrouted_logged >= MISROUTED_LOG_EVERY:
                    self._misrouted_logged = now
                    log.warning("sessions partition %d got %d events of users whose partition is another (user %d "
                                "belongs to %d): the producer must key each event by its user id as a decimal string "
                                "(README: Producing session events); their users' history is split across partitions",
                                mine, len(elsewhere), elsewhere[0], where(elsewhere[0]))
        return out

    def committed(self, ok: bool) -> None:
        st = self.engine.state
        st.clear_changes()
        if ok:
            self.sent = self._sending
            self.clock = max(self.clock, self._clock)
        if ok and len(st.users) > MAX_USERS_IN_MEMORY:  # bound memory: everything is in the store
            self.load()

    def _prefetch(self, events: list[Event]) -> None:
        """Users and sessions the partition has not in memory yet; the global counts of every
        track the batch can read or update (they move with other partitions' commits)."""
        st = self.engine.state
        st.tracks.clear()
        # sessions the session-gap rule ends during this batch: their users may not be in it
        gapped = self.engine.due(max(e.ts for e in events)) if events else []
        batch_users = {e.user_id for e in events} | {u for u, _ in gapped}
        users = list(batch_users - st.users.keys())
        sessions = list(({(e.user_id, e.session_id) for e in events} | set(gapped)) - st.sessions.keys())
        got_u, got_s, _ = self.store.fetch(self.partition, users, sessions, []) if users or sessions else ({}, {}, {})
        st.users.update(got_u)
        st.sessions.update(got_s)
        # sessions still open for users just loaded (the engine may end them)
        more = [(u, s) for u in got_u for s in got_u[u][U_SESSION] if (u, s) not in st.sessions]
        if more:
            st.sessions.update(self.store.fetch(self.partition, [], more, [])[1])
        tracks = {t for e in events for t in (e.track_id, e.next_track_id) if t}
        # resolving a pending play updates its track, which an earlier batch played
        for uid in batch_users:
            u = st.users.get(uid)
            for sid in (u[U_SESSION] if u is not None else ()):
                rec = st.sessions.get((uid, sid))
                if rec is not None and rec[S_PENDING_TRACK]:
                    tracks.add(rec[S_PENDING_TRACK])
        if tracks:
            st.tracks.update(self.store.fetch(self.partition, [], [], list(tracks))[2])
