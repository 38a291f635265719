"""The worker's side of repartitioning (``stages/predict.py`` says the rules): forwarding each run's
events of users who live elsewhere, with this partition's clock, to the repartition topic;
telling partitions of this worker those clocks directly and the others that a partition has read
all; positioning, seeking and releasing the repartition partitions; and handing each predict
batch its inbox of forwarded events. A part of ``WorkerService`` (``service.py``), whose batches
and recovery it serves."""
from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from functools import partial

from models.events import Event
from stream.bootstrap import Stage
from stream.worker.checkpoint import BACKOFF, TRANSIENT
from stream.worker.scheduler import RESEEK_SECONDS, contiguous_run
from stream.worker.stages.predict import FORWARDING_SECONDS, order_of

log = logging.getLogger("skipcache.worker")
READ_ALL_QUIET_SECONDS = 1.0
"""A predict partition tells the others it has read all only after no run for this long (its
fetches come every SKIPCACHE_FETCH_MAX_WAIT_MS while there is more)."""
CLOCK_EVERY_SECONDS = 1.0
"""A predict partition tells every other its clock at least this often (``worth_sending``)."""


class Forwarding:
    """Forwarding's state and steps; ``WorkerService`` provides ``app``, ``built``, ``settings``,
    ``schedulers``, ``health``, ``sought`` and its ``call``, ``spawn``, ``seek``, ``lagging`` and
    fault handling."""

    def init_forwarding(self) -> None:
        self.inboxes: dict[int, list[tuple[object, list]]] = {}
        """Predict partition -> the runs of its repartition partition received, not applied yet
        (faust event, decoded records): every batch of the partition takes them all."""
        self._forwarding = asyncio.Lock()  # one flush of the forward sink at a time
        self.last_run_at: dict[int, float] = {}  # sessions partition -> when its last run arrived (monotonic)
        self.instance = uuid.uuid4().hex[:12]
        """This worker, in the messages it forwards (``route_codec.py``)."""
        self.stamps: dict[tuple[int, int], int] = {}  # (source, partition) -> the last message's count
        self.stamped_events: dict[tuple[int, int], int] = {}  # ... -> the count of the last that carried events
        self.last_sent: dict[tuple[int, int], float] = {}  # (source, partition) -> when a message last went
        self.forwarded_at: dict[tuple[int, int], float] = {}  # ... -> when events last went

    async def forwarded_position(self, stage: Stage, partition: int, earliest: int) -> int:
        """Where a predict partition's repartition partition resumes: the offset committed with its
        state (the topic's earliest the first time). Its runtime is loaded by then (co-partitioned
        with the sessions partition, which faust assigns with it)."""
        rt = stage.runtimes.get(partition)
        if rt is None:
            return earliest
        while True:
            try:
                if await self.call(rt.forwarded_position) is None:
                    await self.call(rt.start_forwarded_at, earliest)
                self.redis_ok()
                break
            except TRANSIENT as exc:
                self.redis_failed(exc)
                await self.wait_for_redis()
        self.sought[(stage.forward.topic, partition)] = time.monotonic()
        return rt.rep_next

    async def seek_forwarded(self, stage: Stage, partition: int) -> None:
        rt = stage.runtimes.get(partition)
        if rt is not None:
            await self.seek(stage.forward.topic, partition, rt.rep_next)

    def release_forwarded(self, partitions: set[int] | None = None) -> None:
        """Drop the forwarded runs received for ``partitions`` (default: all): they are read
        again from the offset committed with the state, so the partitions wait for them anew."""
        stage = self.built.stages.get("predict") if self.built is not None else None
        for p in list(self.inboxes):
            if partitions is None or p in partitions:
                for run, _ in self.inboxes.pop(p):
                    run.ack()
                rt = stage.runtimes.get(p) if stage is not None else None
                if rt is not None:
                    rt.forget_heard()

    def stamp(self, source: int, partition: int, carries_events: bool) -> tuple[str, int]:
        """The next count of this worker's messages from ``source`` to ``partition``."""
        n = self.stamps[(source, partition)] = self.stamps.get((source, partition), -1) + 1
        if carries_events:
            self.stamped_events[(source, partition)] = n
        return self.instance, n

    def hear_directly(self, stage: Stage, source) -> None:
        """The partitions of this worker hear ``source``'s clock now, rather than after its trip
        through Kafka, if they have received every message of this worker's from it that carried
        events for them (and one at least: what earlier owners sent is then in hand too). Saves
        the round trip every batch would otherwise wait for when producers key by user."""
        s = source.partition
        for q, rt in stage.runtimes.items():
            if q == s:
                continue
            got = rt.heard_from.get(s)
            if got is not None and got[0] == self.instance and got[1] >= self.stamped_events.get((s, q), -1):
                rt.hear_clock(s, source.read_clock, source.said_done)

    def worth_sending(self, stage: Stage, source, q: int, now: float) -> bool:
        """A clock-only message goes to a partition that may be waiting for it: one this source
        forwarded to recently (it waits for the clock), one not told anything yet by this worker,
        one of this worker's that has not heard from it (reloaded), and every partition once a
        second (another worker's, reloaded, waits for a first word). Producers that key by user
        then cost a message a second per pair, not one per run and a flush on every run's path."""
        key = (source.partition, q)
        if source.said_done or q in source.routed_to:
            return True
        last = self.last_sent.get(key)
        if last is None or now - last >= CLOCK_EVERY_SECONDS or now - self.forwarded_at.get(key, -math.inf) < 2 * FORWARDING_SECONDS:
            return True
        rt = stage.runtimes.get(q)
        return rt is not None and source.partition not in rt.heard

    async def forward(self, stage: Stage, messages: list[tuple[int, bytes]], source=None) -> None:
        """Send a run's forwarded events and clock to the other predict partitions that need them
        (``worth_sending``), and wait until the broker has them (retrying with backoff while it is
        away)."""
        if source is not None:
            now = time.monotonic()
            s = source.partition
            for q in source.routed_to:
                self.forwarded_at[(s, q)] = now
            messages = [(q, value) for q, value in messages if self.worth_sending(stage, source, q, now)]
            for q, _ in messages:
                self.last_sent[(s, q)] = now
            self.hear_directly(stage, source)
        if not messages:
            return
        sink = stage.forward
        async with self._forwarding:
            for q, value in messages:
                sink.add(None, value, q)
            attempt = 0
            while True:
                try:
                    await sink.flush()
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the broker away: the records stay buffered
                    attempt += 1
                    self.kafka_failed(exc)
                    await asyncio.sleep(BACKOFF.compute(attempt))
            if attempt:
                self.dependency_ok(self.health.kafka)

    async def tell_read_all(self) -> None:
        """Timer: a predict partition that has read all its sessions partition holds says so to
        the others once (they stop waiting for its clock until it reads more). Runs as its own
        task (the timer returns at once)."""
        w = self.built
        stage = w.stages.get("predict") if w is not None else None
        if stage is not None and stage.forward is not None:
            self.spawn("tell_read_all", lambda: self._tell_read_all(stage))

    async def _tell_read_all(self, stage: Stage) -> None:
        """Read all: nothing on the broker past what it received (as far as the fetches say:
        Tansu reports the end of a partition one producer batch short, INFRA.md), and no run for
        ``READ_ALL_QUIET_SECONDS``."""
        lagging = self.lagging(stage)
        now = time.monotonic()
        for p, rt in list(stage.runtimes.items()):
            quiet = now - max(self.last_run_at.get(p, 0.0), rt.since)
            if not rt.said_done and p not in lagging and quiet >= READ_ALL_QUIET_SECONDS:
                await self.forward(stage, rt.route([], True, partial(self.stamp, p)), rt)

    def take_forwarded(self, stage: Stage, work: list, done: list, floors: dict[int, float]) -> tuple[list, list]:
        """Each predict partition's batch takes its whole inbox, and applies forwarded events up
        to its cut (``until``: the scheduler's horizon, the partition's reach, its first own record
        the batch leaves, and, until it has read all, how far it has read); a partition with
        forwarded events and no records of its own joins the batch with none."""
        scheduler = self.schedulers["predict"]
        limit = scheduler.limit
        worked = {p for p, _ in work}
        for p, rt in stage.runtimes.items():
            rt.until = (min(limit, floors.get(p, math.inf)), math.inf)
            pending = scheduler.pending.get(p)
            first = next((r[3] for r in pending.records if type(r[3]) is Event), None) if pending else None
            if first is not None:  # its own records the batch leaves (a full batch): no forwarded event passes them
                rt.until = min(rt.until, order_of(first))
            if not rt.said_done:  # nor those it has yet to receive: it has not read all there is
                rt.until = min(rt.until, (rt.in_hand, math.inf))
            runs = self.inboxes.pop(p, [])
            records = [*rt.inbox, *(r for _, recs in runs for r in recs)]
            rt.inbox = contiguous_run(records, rt.rep_next)
            done += [run for run, _ in runs]
            if not rt.inbox and any(r[0] > rt.rep_next for r in records):
                self.spawn(f"seek_forwarded_{p}", lambda p=p: self.reseek_forwarded(stage, p, records))
            if p not in worked and (rt.inbox or rt.has_due()):
                work.append((p, []))
        return work, done

    async def reseek_forwarded(self, stage: Stage, p: int, records: list) -> None:
        """The repartition partition's next offset did not come (records fetched before a seek):
        seek to it again."""
        tp_topic = stage.forward.topic
        if time.monotonic() - self.sought.get((tp_topic, p), 0.0) > RESEEK_SECONDS:
            rt = stage.runtimes.get(p)
            if rt is not None:
                log.info("predict partition %d: forwarded offset %d did not come (got %d..%d): seeking to it", p,
                         rt.rep_next, min(r[0] for r in records), max(r[0] for r in records))
                self.release_forwarded({p})
                await self.seek_forwarded(stage, p)
