"""A partition of the predict stage (``pozytywka.sessions``, keyed by user): parse, features,
scores, the A/B variant and the accuracy of resolved predictions, on the partition's users and
sessions in the store. Its entries for the warm stage leave as one message per warm partition.

Mis-keyed events (a producer that keys by session, by device or not at all) are repartitioned, as
Kafka Streams and Faust's ``group_by`` do: a sessions partition forwards, as each run of records
arrives (``route``), the events of users whose state lives elsewhere to that partition of the
repartition topic, with how far it has read (its clock) and whether it has read all there is;
it applies only its own users' events. A partition merges what it is forwarded with its own
events in event time (``stages/route_codec.py``): it applies nothing past the clock every other
partition that is still reading has reached (``reach``, the worker's cut), holds forwarded
events beyond it in the store (one list per source, appended and trimmed by the commits), and
drops a forwarded event it already applied (by its source partition and offset: a source
re-read after a crash forwards the same events again). Its repartition partition's offset is
committed and fenced with its sessions offset. So a user's events are applied where the user's
state lives, exactly once, in order.

Track counts are global and move in epochs of event time, days (``models/state.py``): a batch
reads every partition's stored counts of its tracks once, as of its first epoch's start, and
moves them on as its events reach later epochs (``_reread``: its own additions and those of the
checkpoint's other batches, which the checkpoint runs epoch by epoch, ``process_steps``); it
commits its additions with its offset (exactly once), the stored epoch's settling when it first
adds in a later one (``TrackAdditions``). So whatever the batches, a play reads every play
resolved in earlier epochs and none of its own, as training and the simulation do
(``cache_warmer/simulation.py``)."""
from __future__ import annotations

import heapq
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Generator
from operator import attrgetter

import orjson

from cache_warmer.entries import route
from cache_warmer.predictor import PredictionLedger, Predictor, run_steps
from models.events import PLAY, SESSION_END, Catalogue, Event
from models.features import EngineConfig, FeatureEngine
from models.parsing import TimeWindow, decode_event, parse_event
from models.rejections import Rejected, Rejections
from models.replay import TIE_RANK
from models.state import S_PENDING_TRACK, State, U_SESSION

from stream.worker.stages import route_codec
from stream.worker.stages.entry_codec import OwnMessages, encode, split_batch
from stream.worker.stages.held import STATE_KEY as HELD_KEY, HeldQueues
from stream.worker.stages.partition import BatchOutput, OffsetGap, PartitionRuntime
from stream.store import (Changes, Mirror, PartitionStore, StateMoved, TrackAdditions, add_counts, counts_as_of,
                          epoch_weights)

MAX_EVENT_BYTES = 16_384
MAX_USERS_IN_MEMORY = 500_000
MIRRORED_TRACKS = 200_000
"""Most tracks a predict partition keeps its stored parts of the track counts of in memory
(``PredictRuntime.stored_counts``; ~200 bytes each): a partition with more reads its own parts
from the store, like other processes' partitions."""
MISROUTED_LOG_EVERY = 60.0
"""Seconds between a partition's log lines about events of users that belong elsewhere."""
REPARTITION = "repartition"
"""The name of a predict partition's second input (its repartition partition) in the store."""
FORWARDING_SECONDS = 60.0
"""A source that forwarded events here this recently is waited for; one that has not is not (so
producers that key by user pay no wait): an event it starts forwarding is applied when it comes,
counted late if behind, and from then on it is waited for."""
SOURCE_IDLE_SECONDS = 10.0
"""A partition that forwards events and has said nothing for this long (its worker gone, a long
rebalance) is not waited for: what it forwards later is applied when it comes (counted late)."""
FORWARD_BYTES = 960_000
"""A run's records are routed in slices of at most this many bytes of events (with
``FORWARD_OVERHEAD`` each), each slice's forwarded events a message of their own: a fetched run
(up to 32,000 records from Tansu) of a producer that keys by nothing would forward megabytes in
one message, past a Kafka broker's default ``message.max.bytes`` (1 MiB). Each message is a
produce batch of its own (``stream/sinks/kafka_topic.py``), and a partition's batches go one
round trip after another: slices of 512 KiB cost a run of such a producer 13% of the worker's
events/s against one message, slices this size half as many trips."""
FORWARD_OVERHEAD = 32
"""Bytes a forwarded event adds to its message besides itself (its offset, brackets, commas)."""
STREAM_BITS = 48
"""Inside a batch an event's sequence carries its source: ``(source + 1) << 48 | offset`` for a
forwarded event (``source``'s offset), the offset alone for the partition's own."""
_OFFSET_MASK = (1 << STREAM_BITS) - 1
log = logging.getLogger("skipcache.predict")
_TS, _KIND = attrgetter("ts"), attrgetter("kind")  # an event's time and kind, for map() over a batch


class PredictRuntime(PartitionRuntime):
    stage = "predict"

    def __init__(self, partition: int, store: PartitionStore, catalogue: Catalogue, scorers: dict,
                 column: str, engine_config: EngineConfig, warm_partitions: int,
                 track_partition: Callable[[str], int], count_from: float = -math.inf, variant_of=None,
                 window: TimeWindow = TimeWindow(), user_partition: Callable[[int], int] | None = None,
                 partitions: int = 1, own: OwnMessages | None = None, mirrors: "dict[int, Mirror] | None" = None):
        """``column``: the score the warm stage's policy reads (``A``, or ``ab`` for an A/B
        test); ``track_partition``: a track's warm partition; ``user_partition``: the sessions
        partition a user's events are keyed to (the contract), to find producers that key
        otherwise; ``partitions``: the sessions topic's (with ``user_partition``, events keyed
        otherwise are repartitioned among them); ``own``: where the entries messages it makes are
        kept for this process's own warm stage (``entry_codec.OwnMessages``); ``mirrors``: the
        process's ``Mirror`` of each predict partition another process owns, shared by its runtimes."""
        self.catalogue = catalogue
        self.mirrors: dict[int, Mirror] = mirrors if mirrors is not None else {}
        self.own = own
        self.scorers = scorers
        self.column = column
        self.engine_config = engine_config
        self.warm_partitions = warm_partitions
        self.track_partition = track_partition
        self.count_from = count_from
        self.variant_of = variant_of
        self.window = window
        self.user_partition = user_partition
        self.sources = partitions
        self.repartitions = user_partition is not None and partitions > 1
        self.rejections = Rejections()
        self._misrouted_logged = -math.inf
        self.inbox: list[tuple] = []
        """The repartition partition's decoded records the worker hands the next batch."""
        self.until = (math.inf, math.inf)
        """How far the next batch may apply forwarded events: those ordered (``order_of``) before
        it (the worker's cut: the horizon, ``reach``, and the first own record it leaves)."""
        self.read_clock = -math.inf
        """The event time this partition has read up to (``route``: sent to every other one)."""
        self.in_hand = -math.inf
        """The same, of records handed to the worker's scheduler (its runs are routed, and their
        forwarded events flushed, before: a crash cannot commit a record whose forwarding was lost)."""
        self.said_done = False
        """The last thing ``route`` told the others was that this partition had read all."""
        self.routed_to: set[int] = set()
        """The partitions the last ``route`` forwarded events to."""
        super().__init__(partition, store)

    def load_state(self, blob: bytes | None) -> None:
        self.engine = FeatureEngine(self.catalogue, self.engine_config, State(track_delta={}), self.rejections)
        ledger = PredictionLedger([self.column], self.count_from, outcomes_of=self.column)
        self.sent: dict[int, int] = {}
        """Warm partition -> the offset of the last event whose entries went there: the warm
        stage has all of this partition's committed entries once it applied that far."""
        self.clock = -math.inf
        """The event time of the newest event applied: how far this partition has come."""
        self.rep_next = (self.store.position(self.partition, REPARTITION) or 0) if self.repartitions else 0
        """The next offset of this partition's repartition partition."""
        self.via: dict[int, int] = {}
        """Source partition -> the highest offset of it whose forwarded event was taken in."""
        self.forwarded: dict[int, list[tuple[int, Event, dict]]] = {}
        """Source -> its forwarded events taken in, not applied yet (past the cut): (offset,
        event, as produced). Stored apart from the blob, as lists the commits append to and trim."""
        self.held = HeldQueues()
        """``forwarded`` as the store holds it (``held.py``)."""
        self.sent_forwarded: dict[str, int] = {}
        """``warm partition:source`` -> the last offset of ``source`` whose entries went there."""
        self.heard: dict[int, tuple[float, bool, float]] = {}
        """Source -> (its clock, it had read all, when heard: monotonic), since loaded."""
        self.since = time.monotonic()
        self.silent: set[int] = set()
        """Sources not waited for now: said nothing for ``SOURCE_IDLE_SECONDS`` (logged as they go)."""
        self._rep_to = self.rep_next
        self.rep_received = self.rep_next
        """The repartition offset after the last record received in order (``hear``)."""
        self.heard_from: dict[int, tuple[str, int]] = {}
        """Source -> (worker, count) of the last message received from it through Kafka."""
        self.forwarding: dict[int, float] = {}
        """Source -> when it last forwarded events here (monotonic): only those are waited for."""
        self._sending, self._sending_forwarded = self.sent, self.sent_forwarded
        self.stored_counts = self.store.stored_counts(self.partition, MIRRORED_TRACKS)
        """This partition's stored parts of the track counts, as its commits leave them
        (``TrackCounts.add``): the batches of the partitions in this process read those here, not
        from the store (None: past ``MIRRORED_TRACKS``, read from the store like the others')."""
        self.track_epoch, self.epoch_plays = ((self.stored_counts.epoch, self.stored_counts.now)
                                              if self.stored_counts is not None
                                              else self.store.epoch_plays(self.partition))
        """The epoch of this partition's stored additions to the track counts, and those additions."""
        self._tracks: TrackAdditions | None = None
        self._parts: list = []
        """Every partition's stored counts (``TrackCounts``) of the tracks the batch can read."""
        self._tracks_of: set[str] = set()
        """Those tracks (``_prefetch``): moved on to each later epoch the batch reaches (``_reread``)."""
        self.peers: tuple = ()
        """The predict runtimes whose batches the running checkpoint applies with this one's."""
        self.engine.state.reread = self._reread
        if blob:
            state = orjson.loads(blob)
            ledger.load_state(state["ledger"])
            self.sent = {int(q): seq for q, seq in state["sent"].items()}
            self.clock = state.get("clock", -math.inf)
            self.via = {int(src): o for src, o in state.get("via", {}).items()}
            self.sent_forwarded = state.get("sent_forwarded", {})
            self._sending, self._sending_forwarded = self.sent, self.sent_forwarded
            for src, queued in self.held.load(self.store, self.partition, state, "forwarded").items():
                self.forwarded[src] = [(o, parse_event(obj), obj) for o, obj in queued]
        self.engine.watch(ledger.pending)  # the pending plays come under the session-gap rule again
        if blob:
            self.engine.load_held(state.get("held", []))
        self.predictor = Predictor(self.engine, self.scorers, [self.column], variant_of=self.variant_of,
                                   ledger=ledger)

    def process(self, records: list[tuple]) -> BatchOutput:
        return run_steps(self.process_steps(records))

    def process_steps(self, records: list[tuple]) -> Generator[int, None, BatchOutput]:
        """``records``: the sessions partition's run; ``inbox``: its repartition partition's. With
        neither, and nothing forwarded due: the partition is waiting for the others to come level
        in event time (``scheduler.py``), not idle; it tells every warm partition its clock, so
        the warm stage keeps waiting for it rather than taking its silence for idleness. It
        yields the track counts' epoch before it reads the counts of each (``apply_steps``)."""
        inbox, self.inbox = [r for r in self.inbox if r[0] >= self.rep_next], []
        if inbox and inbox[0][0] != self.rep_next:
            raise OffsetGap(self.partition, self.rep_next, inbox[0][0])
        self._rep_to = inbox[-1][0] + 1 if inbox else self.rep_next
        out = BatchOutput(self.stage, self.partition, self.next_offset, self.next_offset)
        fresh = self.take_fresh(records, out)
        if fresh or inbox or self.has_due():
            yield from self.apply_steps(fresh, out, inbox)
        elif math.isfinite(self.clock):
            for q in range(self.warm_partitions):
                out.publish.append(("entries", None, encode(self.partition, self.clock, []), q))
        return out

    def decode(self, records: list[tuple]) -> list[tuple]:
        """``(offset, value, Kafka timestamp, Event or Rejected)`` of each record: the worker
        decodes a run when it arrives, to apply partitions in event-time order (``scheduler.py``)."""
        out = []
        append = out.append
        check, wall = self.window.check, time.time()
        for record in records:  # (offset, value) or (offset, value, Kafka timestamp)
            offset, value = record[0], record[1]
            ts = record[2] if len(record) > 2 else None
            try:
                if value is None:
                    raise Rejected("empty_message")
                if len(value) > MAX_EVENT_BYTES:
                    raise Rejected("too_large", f"{len(value)} bytes")
                item = check(decode_event(value), ts or wall)
            except Rejected as r:
                item = r
            append((offset, value, ts, item))
        return out

    def apply(self, records: list[tuple], out: BatchOutput, inbox: list[tuple] = ()) -> None:
        run_steps(self.apply_steps(records, out, inbox))

    def apply_steps(self, records: list[tuple], out: BatchOutput, inbox: list[tuple] = ()) -> Generator[int, None, None]:
        """``apply``, yielding the track counts' epoch before it reads the counts of each: first
        its own (before ``_prefetch``), then each later one its events reach (in the predictor)."""
        events: list[Event] = []
        offsets: list[int] = []
        if records and len(records[0]) <= 3:
            records = self.decode(records)
        for offset, value, _, item in records:
            if type(item) is Event:
                events.append(item)
                offsets.append(offset)
            else:
                out.reject(offset, item.reason, value, item.detail)
        contract = self._contract(events)
        clock = max(map(_TS, events)) if events else -math.inf  # what it has read, its own or not
        forwarded = 0
        if self.repartitions:
            where, mine = self.user_partition, self.partition
            if "misrouted:wrong_partition" in contract:  # forwarded by ``route`` as they arrived
                own = [i for i, e in enumerate(events) if where(e.user_id) == mine]
                events, offsets = [events[i] for i in own], [offsets[i] for i in own]
            due = self._take_in(inbox, out)
            if due:
                forwarded = sum(map(len, due))
                clock = max(clock, max(e.ts for run in due for _, e in run))
                late = sum(1 for run in due for _, e in run if e.ts < self.clock)
                if late:
                    contract["repartitioned_late"] = late
                # each input keeps its order (its entries' sequences stay in order); their heads interleave
                pairs = list(heapq.merge(list(zip(offsets, events)), *due, key=_event_order))
                offsets, events = [o for o, _ in pairs], [e for _, e in pairs]
                contract["repartitioned"] = forwarded
        kinds = out.kinds
        for kind, n in Counter(map(_KIND, events)).items():
            kinds[kind] = kinds.get(kind, 0) + n
        out.events = len(events)
        st = self.engine.state
        start = max(self.clock, events[0].ts) if events else self.clock
        epoch = st.epoch_of(start) if math.isfinite(start) else None
        if epoch is not None:
            yield epoch
            st.set_epoch(epoch)
        self._prefetch(events, epoch)
        orphans_before = self.rejections.counts.get("orphan_skip", 0)
        repaired_before = dict(self.engine.repaired)
        predicted = yield from self.predictor.process_steps(events, offsets)
        out.outcomes = predicted.outcomes
        self._sending = sent = dict(self.sent)
        self._sending_forwarded = sent_forwarded = dict(self.sent_forwarded)
        self._clock = self.clock
        if math.isfinite(clock):  # every warm partition hears of every batch: its entries, or at least its clock
            self._clock = max(clock, self.clock)
            for q, to_q in enumerate(route(predicted.entries, self.track_partition, self.warm_partitions)):
                origins = None
                if forwarded:  # forwarded events' entries keep their place; their origins go beside
                    to_q, origins = _unpack(to_q)
                for piece in split_batch(clock, to_q, origins):
                    value = encode(self.partition, *piece)
                    if self.own is not None:
                        self.own.keep(q, value, self.partition, *piece)
                    out.publish.append(("entries", None, value, q))
                if origins is None:
                    if to_q:
                        sent[q] = to_q[-1][0]
                    continue
                for entry, origin in zip(to_q, origins):
                    if origin < 0:
                        sent[q] = entry[0]
                    else:
                        sent_forwarded[f"{q}:{origin}"] = entry[0]
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
        state = {"ledger": self.predictor.ledger.to_state(), "sent": {str(q): o for q, o in sent.items()}}
        if held := self.engine.held_state():
            state["held"] = held
        if math.isfinite(self._clock):
            state["clock"] = self._clock
        push, drop = {}, {}
        if self.repartitions:
            if self.via:
                state["via"] = {str(src): o for src, o in self.via.items()}
            if sent_forwarded:
                state["sent_forwarded"] = sent_forwarded
            push, drop, state[HELD_KEY] = self.held.changes()
        by_epoch = [(e, adds) for e, d in st.additions() if (adds := {t: c for t, c in d.items() if any(c)})]
        self._tracks = TrackAdditions(self.track_epoch, self.epoch_plays, by_epoch, self.stored_counts) \
            if by_epoch else None
        out.changes = Changes(
            users={u: st.users[u] for u in st.dirty_users if u in st.users},
            sessions={k: st.sessions[k] for k in st.dirty_sessions if k in st.sessions},
            deleted_sessions=set(st.deleted_sessions),
            tracks=self._tracks,
            blob=orjson.dumps(state),
            counters=counters, queue_push=push, queue_drop=drop,
            inputs={REPARTITION: (self.rep_next, self._rep_to)} if self.repartitions else {})

    # ---- repartitioning -------------------------------------------------------------------------
    def route(self, records: list[tuple], done: bool,
              stamp: Callable[[int, bool], tuple[str, int]] | None = None) -> list[tuple[int, bytes]]:
        """(partition, message) for every other sessions partition: the events of ``records``
        (a decoded run, as it arrives) whose users live there, and how far this partition has
        read (``done``: all the broker held). Sent before the run is applied, so no partition
        waits on another's batches: only on its reading. ``stamp(partition, carries events)``:
        the sending worker and its count of messages to that partition."""
        if not self.repartitions:
            return []
        out: list[tuple[int, bytes]] = []
        self.routed_to = set()
        start = size = 0
        for i, record in enumerate(records):  # slices of FORWARD_BYTES, as if fetched so
            size += len(record[1]) + FORWARD_OVERHEAD
            if size > FORWARD_BYTES and i > start:
                out += self._route(records[start:i], False, stamp, False)
                start, size = i, len(record[1]) + FORWARD_OVERHEAD
        return out + self._route(records[start:], done, stamp, True)

    def _route(self, records: list[tuple], done: bool, stamp, last: bool) -> list[tuple[int, bytes]]:
        """One slice's messages: to every other partition if ``last``, else to those it forwards
        events to (each says how far this partition has read by the slice's end)."""
        where, mine, clock = self.user_partition, self.partition, self.read_clock
        elsewhere: dict[int, list[tuple[int, bytes]]] = {}
        for offset, value, _, item in records:
            if type(item) is Event:
                if item.ts > clock:
                    clock = item.ts
                q = where(item.user_id)
                if q != mine:
                    elsewhere.setdefault(q, []).append((offset, value))
        self.read_clock, self.said_done = clock, done
        self.routed_to |= elsewhere.keys()
        return [(q, route_codec.encode(mine, clock, done, elsewhere.get(q, []),
                                       stamp(q, q in elsewhere) if stamp is not None else None))
                for q in (range(self.sources) if last else sorted(elsewhere)) if q != mine]

    def decode_forwarded(self, records: list[tuple]) -> list[tuple]:
        """``(offset, value, Kafka timestamp, (source, clock, done, events) or Rejected)`` of each
        record of the repartition partition."""
        out = []
        wall = time.time()
        for offset, value, *kafka_ts in records:
            ts = kafka_ts[0] if kafka_ts else None
            try:
                item = route_codec.decode(value, self.sources, ts or wall, self.window)
                if item[0] == self.partition:
                    raise Rejected("unknown_source", f"partition {item[0]} forwarding to itself")
            except Rejected as r:
                item = r
            out.append((offset, value, ts, item))
        return out

    def hear(self, records: list[tuple]) -> None:
        """Note how far each source has read, from forwarded records as they are received (the
        worker's inbox, which the next batch takes whole). Only records that continue, unbroken,
        the ones received before count: records past a hole (fetched before a seek) are read
        again, and a clock must not promise events that are not in hand."""
        now = time.monotonic()
        at = max(self.rep_received, self.rep_next)
        for offset, _, _, item in records:
            if offset < at:
                continue
            if offset > at:
                break
            at += 1
            if type(item) is tuple:
                src, clock, done, events, stamp = item
                self.hear_clock(src, clock, done, now)
                if stamp is not None:
                    self.heard_from[src] = stamp
                if events:
                    self.forwarding[src] = now
        self.rep_received = at

    def hear_clock(self, src: int, clock: float, done: bool, now: float | None = None) -> None:
        """A source's clock: from its message (``hear``), or heard in the same worker
        (``service.py``: only once every message of it that carried events for this partition
        has been received)."""
        before = self.heard.get(src)
        self.heard[src] = (max(clock, before[0]) if before else clock, done,
                           time.monotonic() if now is None else now)

    def forget_heard(self) -> None:
        """Forwarded records received were dropped (to be read again): wait for them anew."""
        self.heard.clear()
        self.heard_from.clear()
        self.forwarding.clear()
        self.rep_received = self.rep_next
        self.since = time.monotonic()

    def reach(self, now: float | None = None, local: frozenset[int] | set[int] = frozenset()) -> float:
        """The event time up to which every event forwarded to this partition has arrived: the
        lowest clock of the sources that forward to it (events in the last ``FORWARDING_SECONDS``)
        and are still reading. Every source is waited for until it is first heard from; one that
        forwards nothing, has read all, or said nothing for ``SOURCE_IDLE_SECONDS`` is not (what
        it forwards then is applied when it comes, counted late if behind). ``local``: sources
        this worker reads itself, which are slow when they say nothing (their messages queue
        behind its own runs), never gone."""
        if not self.repartitions:
            return math.inf
        now = time.monotonic() if now is None else now
        lowest, silent = math.inf, set()
        for src in range(self.sources):
            if src == self.partition:
                continue
            h = self.heard.get(src)
            if h is None:
                if src in local or now - self.since < SOURCE_IDLE_SECONDS:
                    return -math.inf
                silent.add(src)
            elif not h[1]:
                if src not in local and now - h[2] >= SOURCE_IDLE_SECONDS:
                    silent.add(src)
                elif h[0] < lowest and now - self.forwarding.get(src, -math.inf) < FORWARDING_SECONDS:
                    lowest = h[0]
        if silent != self.silent:
            for src in sorted(silent - self.silent):
                log.warning("predict partition %d: sessions partition %d has said nothing for %.0f s; not waiting "
                            "for the events it forwards (those it sends later are applied when they come, counted "
                            "as repartitioned_late)", self.partition, src, SOURCE_IDLE_SECONDS)
            for src in sorted(self.silent - silent):
                log.info("predict partition %d: sessions partition %d reads again", self.partition, src)
            self.silent = silent
        return lowest

    def start_forwarded_at(self, offset: int) -> None:
        """Where a repartition partition the store held nothing for starts."""
        self.rep_next = self.rep_received = self._rep_to = self.store.init_offset(self.partition, offset, REPARTITION)

    def forwarded_position(self) -> int | None:
        return self.store.position(self.partition, REPARTITION) if self.repartitions else None

    def has_due(self) -> bool:
        """Forwarded events held in the queues that the cut now lets through."""
        until = self.until
        return any(q and order_of(q[0][1]) < until for q in self.forwarded.values())

    def _take_in(self, inbox: list[tuple], out: BatchOutput) -> list[list[tuple[int, Event]]]:
        """Take the inbox's forwarded events into the per-source queues (each once), and hand
        back, per source, those up to ``until`` as (sequence, event); the rest wait."""
        queues, via = self.forwarded, self.via
        for offset, value, _, item in inbox:
            if type(item) is not tuple:
                out.reject(offset, f"forwarded_{item.reason}", value, f"repartition offset {offset}: {item.detail}")
                continue
            src, _, _, events, _ = item
            high = via.get(src, -1)
            queue = queues.setdefault(src, [])
            pushed = self.held.pushed.setdefault(src, [])
            for seq, event, obj in events:
                if seq <= high:
                    out.skipped_duplicates += 1
                    continue
                high = seq
                if type(event) is Event:
                    queue.append((seq, event, obj))
                    pushed.append([seq, obj])
                else:
                    out.reject(offset, f"forwarded_{event.reason}", orjson.dumps(obj), event.detail)
            via[src] = high
        until, due = self.until, []
        for src, queue in queues.items():
            n = 0
            while n < len(queue) and order_of(queue[n][1]) < until:
                n += 1
            if n:
                tag = (src + 1) << STREAM_BITS
                due.append([(tag | seq, e) for seq, e, _ in queue[:n]])
                del queue[:n]
                self.held.dropped[src] = self.held.dropped.get(src, 0) + n
        return due

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
                                "(README: Producing session events)%s", mine, len(elsewhere), elsewhere[0],
                                where(elsewhere[0]), "; they are forwarded to their users' partitions through the "
                                "repartition topic (one more trip through Kafka each)" if self.repartitions else "")
        return out

    def committed(self, ok: bool) -> None:
        st = self.engine.state
        if ok and self._tracks is not None:  # what the stored epoch holds now
            if self.stored_counts is not None:
                self.stored_counts.add(self._tracks)
                self.track_epoch, self.epoch_plays = self.stored_counts.epoch, self.stored_counts.now
            else:
                last, adds = self._tracks.by_epoch[-1]
                if last != self.track_epoch:
                    self.track_epoch, self.epoch_plays = last, {}
                add_counts(self.epoch_plays, adds)
        self._tracks = None
        st.clear_changes()
        if ok:
            self.sent = self._sending
            self.clock = max(self.clock, self._clock)
            if self.repartitions:
                self.rep_next = self._rep_to
                self.sent_forwarded = self._sending_forwarded
        self.held.committed(ok)
        if ok and len(st.users) > MAX_USERS_IN_MEMORY:  # bound memory: everything is in the store
            self.load()

    def _prefetch(self, events: list[Event], epoch: int | None) -> None:
        """Users and sessions the partition has not in memory yet; the global counts of every
        track the batch can read, as of the start of its ``epoch``; and, read last, the
        partition's offset: one round trip (``read_batch``), but after loading users (a first
        batch, or memory freed), whose open sessions and the tracks they wait on are read next."""
        st = self.engine.state
        # sessions the session-gap rule ends during this batch: their users may not be in it
        last_ts = max(e.ts for e in events) if events else None
        gapped = self.engine.due(last_ts) if events else []
        batch_users = {e.user_id for e in events} | {u for u, _ in gapped}
        users = list(batch_users - st.users.keys())
        sessions = list(({(e.user_id, e.session_id) for e in events} | set(gapped)) - st.sessions.keys())
        # the epochs its events reach: a part of the counts none of them reads is not read
        epochs = (epoch, max(epoch, st.epoch_of(last_ts))) if epoch is not None and events else None
        tracks = self._tracks_read(events, batch_users)
        here = {rt.partition: rt.stored_counts for rt in {self, *self.peers} if rt.stored_counts is not None}
        read, mirrored = self._read(users, sessions, tracks, epochs, here)
        st.users.update(read.users)
        st.sessions.update(read.sessions)
        if read.users:
            more = [(u, s) for u in read.users for s in read.users[u][U_SESSION] if (u, s) not in st.sessions]
            if more:
                st.sessions.update(self.store.fetch(self.partition, [], more, [])[1])
            tracks = self._tracks_read(events, batch_users)
            read, mirrored = self._read([], [], tracks, epochs, here)
        # the stored parts of the partitions here, as their commits left them (what the store
        # holds), and of those mirrored, as the store held them at the read: copied, as a batch
        # of another partition here may move a mirror on while this one still reads them
        self._parts = [part for part in read.tracks if part is not None] + [
            part.only(tracks) for part in here.values()] + [
            part.only(tracks, copy=True) for part in mirrored.values() if part is not None] if tracks else []
        self._tracks_of = tracks
        st.tracks = counts_as_of(self._parts, epoch, tracks, self._additions(-math.inf, epoch)) \
            if tracks and epoch is not None else {}
        # a store that went back (a failover that lost acknowledged commits) before any of the
        # reads shows it in the offset, read last, before the batch's entries, computed from what
        # was read, are sent (re-sent after the replay, they would be dropped as already applied)
        if (read.position or 0) != self.next_offset:
            raise StateMoved(self.stage, self.partition, read.position, self.next_offset)

    def _read(self, users: list[int], sessions: list[tuple[int, int]], tracks: set[str],
              epochs: tuple[int, int] | None, here: dict) -> tuple:
        """``read_batch``, and the mirrored partitions' parts as the store held them then
        (``Mirror``); a partition whose parts turn out too big to mirror is read again, and
        per batch from then on (one whose mirror had nothing to apply plans to, again whole)."""
        mirrors = self.mirrors
        for p in range(self.sources):
            if p not in here and p not in mirrors:
                mirrors[p] = Mirror()
        while True:
            since = {p: m.since() for p, m in mirrors.items() if p not in here and not m.too_big}
            read = self.store.read_batch(self.partition, users, sessions, list(tracks), epochs, here.keys(), since,
                                         MIRRORED_TRACKS)
            mirrored = {p: mirrors[p].update(log) for p, log in read.logs.items()}
            if None not in mirrored.values():
                return read, mirrored

    def _tracks_read(self, events: list[Event], batch_users: set[int]) -> set[str]:
        """The tracks a batch can read the counts of: its events' (playing and next), and those
        of plays pending in its users' sessions (resolving one updates a track an earlier batch
        played)."""
        st = self.engine.state
        tracks = {t for e in events for t in (e.track_id, e.next_track_id) if t}
        for uid in batch_users:
            u = st.users.get(uid)
            for sid in (u[U_SESSION] if u is not None else ()):
                rec = st.sessions.get((uid, sid))
                if rec is not None and rec[S_PENDING_TRACK]:
                    tracks.add(rec[S_PENDING_TRACK])
        return tracks

    def _additions(self, start: float, end: int, own: bool = False) -> list[dict[str, list]]:
        """The additions to the track counts in epochs ``start`` <= e < ``end`` that the store does
        not hold yet: the other batches' of the running checkpoint (``peers``), which have applied
        their events of those epochs already (``checkpoint.py``), and with ``own`` this batch's."""
        runtimes = [rt for rt in self.peers if rt is not self]
        if own:
            runtimes.append(self)
        return [adds for rt in runtimes for e, adds in rt.engine.state.additions() if start <= e < end and adds]

    def _reread(self, old: int, new: int) -> None:
        """Move the batch's track counts on from epoch ``old``'s start to ``new``'s: add every
        partition's additions in between (this batch's, the checkpoint's others', and the stored
        epochs that come into view), each once, for the tracks the batch reads."""
        counts, tracks = self.engine.state.tracks, self._tracks_of
        if not tracks:
            return
        for part in self._parts:
            (a0, b0), (a1, b1) = epoch_weights(old, part.epoch), epoch_weights(new, part.epoch)
            if a1 != a0:
                add_counts(counts, part.now, a1 - a0)
            if b1 != b0:
                add_counts(counts, part.last, b1 - b0)
        for adds in self._additions(old, new, own=True):
            add_counts(counts, adds, only=tracks)


_MERGE_RANK = {**TIE_RANK, SESSION_END: 3}
"""The rule of ties (``models/replay.py``), and a session's end after all of its instant."""


def order_of(e: Event) -> tuple[float, int]:
    """Where own and forwarded events merge, as the replay orders them: by time, same-instant
    events by the rule of ties."""
    return e.ts, _MERGE_RANK.get(e.kind, 1)


def _event_order(pair: tuple[int, Event]) -> tuple[float, int]:
    return order_of(pair[1])


def _unpack(entries: list[tuple]) -> tuple[list[tuple], list[int]]:
    """Entries with their sequences unpacked, and each one's origin (-1: this partition's own)."""
    out, origins = [], []
    for entry in entries:
        stream = entry[0] >> STREAM_BITS
        if stream:
            out.append((entry[0] & _OFFSET_MASK, *entry[1:]))
        else:
            out.append(entry)
        origins.append(stream - 1)
    return out, origins
