"""The worker's loop and its recovery, as one object whose methods the Faust wiring (``app.py``)
calls: the agents hand it runs (``consume``), faust's recovery asks it where partitions resume
(``positions``), its timers cut overdue batches, release held entries, refresh thresholds and
check Kafka; ``/healthz`` reads ``readiness``. Its repartitioning steps (forwarding mis-keyed
events, clocks, the repartition partitions' positions and inboxes) are in ``forwarding.py``.

Per stage, the runs received wait in a ``RunScheduler`` (``scheduler.py``) until the stage applies
them: as soon as no more runs are waiting in faust's buffer, when a batch is full, or when the
oldest has waited ``SKIPCACHE_BATCH_WITHIN``. A batch goes through the stage's ``Checkpoint``
(process -> sinks -> flush -> commit -> sensors), whose Redis steps run in a thread: no Redis
call runs on the event loop, so heartbeats, fetches and ``/healthz`` never wait on Redis.

Faults: a Redis call that fails (connection lost, timeout) makes the worker unready, wait with
jittered exponential backoff, and, once Redis answers, re-read the stage's partitions from Redis
and seek to where Redis says; a fence or a Redis that came back empty or older goes the same way.
A partition whose records the topic no longer holds stops the worker with an error saying so."""
from __future__ import annotations

import asyncio
import gc
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import faust
from faust.types import TP
from threadpoolctl import threadpool_limits

from models.events import Event
from stream.bootstrap import Stage, Worker
from stream.settings import Settings
from stream.store import StateMoved
from stream.worker.checkpoint import BACKOFF, TRANSIENT, PartitionStopped
from stream.worker.health import Dependency, Health
from stream.worker.log_noise import ClientNoise
from stream.worker.metrics import WorkerMetrics
from stream.worker.positions import StateLost, resume_offset
from stream.stores.redis_store import OldLayout
from stream.worker.forwarding import Forwarding
from stream.worker.scheduler import RESEEK_SECONDS, RunScheduler, contiguous_run
from stream.worker.stages.warm import BEHIND_WALL_SECONDS, CAUGHT_UP_SECONDS, SourceEnds

log = logging.getLogger("skipcache.worker")
GC_YOUNG_PER_RECORD = 50
"""The young generation is collected after this many net container allocations per record a
batch may hold (``SKIPCACHE_BATCH_SIZE``). A batch keeps ~20 containers per record alive until
it ends (runs, events, rows, entries), two stages' batches run at once, and none of it is ever
cyclic: below that peak, every batch set off collections that traversed all of it, again and
again (with a fixed 50,000: ~50 collections of ~25 ms per run, 4-9% of the worker's CPU). Cyclic
garbage, the only kind the collector frees, is rare here (tens of objects per run) and itself
counts towards the threshold, so it stays bounded."""
GC_YOUNG_MIN = 50_000
GC_OLDER = (20, 10)
QUIET_CHECK_SECONDS = 1.0
"""How long a warm partition's end offset read at a quiet-source check stands while the partition
works towards it (records still on their way); then it is read again."""
BLAS_THREADS = 1
"""A batch's scores are one small matrix product (plays x features). On a batch past a few
thousand plays OpenBLAS splits it over a thread per core, whose threads then spin waiting for
more work: on the cores the broker, Redis and a second worker need. With one thread, batches of
20,000 events of one partition cost 15% less CPU per event (bench/RESULTS.md, issue 16)."""


def gc_thresholds(batch_size: int) -> tuple[int, int, int]:
    return max(GC_YOUNG_MIN, GC_YOUNG_PER_RECORD * batch_size), *GC_OLDER


def tune_process(batch_size: int) -> None:
    """Once the worker's parts are built. The catalogue, the model and faust live as long as the
    process: keep the cyclic collector from rescanning them on every full collection; and collect
    the young generation only past what a batch holds (``GC_YOUNG_PER_RECORD``; at the default,
    a quarter of the worker's time once went to the collector). And score with ``BLAS_THREADS``."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*gc_thresholds(batch_size))
    threadpool_limits(BLAS_THREADS, user_api="blas")


def event_time(record: tuple) -> float | None:
    """A decoded sessions record's event time (None for a rejected one: it orders nothing)."""
    item = record[3]
    return item.ts if type(item) is Event else None


def _cause(exc: BaseException) -> str:
    """What failed, in words: the exception's type and message, and the cause's if it has one."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    inner = exc.__cause__ or exc.__context__
    return f"{text} <- {type(inner).__name__}: {inner}" if inner is not None and str(inner) not in text else text


def _log_failure(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("a timer's task failed: %r", task.exception(), exc_info=task.exception())


class WorkerService(Forwarding):
    def __init__(self, app: faust.App, settings: Settings, build: Callable[[Settings], Worker]):
        self.app = app
        self.settings = settings
        self.build = build
        self.built: Worker | None = None
        self.health = Health(settings.stall_seconds, settings.late_entries_alert)
        self.metrics = WorkerMetrics()
        self.noise = {"kafka": ClientNoise(self.health.kafka), "redis": ClientNoise(self.health.redis)}
        """The clients' own warnings and errors, counted while their dependency is away (``log_noise.py``)."""
        self.health_away: dict[str, float] = {}  # dependency -> when it went
        self._noise_said = time.monotonic()
        self.locks = {"predict": asyncio.Lock(), "warm": asyncio.Lock()}
        """One checkpoint at a time per stage (the agent, the batch-deadline timer, the idle timer)."""
        self.schedulers = {
            "predict": RunScheduler(settings.batch_size, settings.batch_within, event_time),
            "warm": RunScheduler(settings.batch_size, settings.batch_within)}
        self.sought: dict[tuple[str, int], float] = {}  # (topic, partition) -> when last sought
        self._at: dict[str, tuple[int, int]] = {}  # stage -> (partition, offset) its agent works on
        self._others: dict[str, tuple[int, float]] = {}  # other workers' partitions with lag -> (offset, since)
        self._quiet_ends: dict[int, tuple[int, float]] = {}
        """Warm partition -> (its end offset on the broker at the last quiet-source check, when):
        it releases what a quiet source held back once it has applied up to there."""
        self._quiet_checked = -math.inf  # when the last such check began (monotonic)
        self._cutting: dict[str, asyncio.Future] = {}  # stage (or check) -> the task running it
        self._draining: dict[str, asyncio.Future] = {}  # stage -> its agent's batch task (``drain_soon``)
        self._drain_again: set[str] = set()  # stages asked to drain while their batch task ran
        self.channels: dict[str, object] = {}
        """Stage -> faust's buffer of runs its agent has not taken yet."""
        self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="skipcache-redis")
        self.init_forwarding()

    # ---- dependencies ---------------------------------------------------------------------------
    async def call(self, fn, *args):
        """A blocking step (a Redis call, a batch's processing) in a thread, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def dependency_failed(self, dep: Dependency, exc: BaseException, then: str) -> None:
        """Count the failure; log once when the dependency goes, saying what the worker does."""
        self.metrics.dependency_errors.labels(dep.name).inc()
        if dep.failed(exc):
            self.health_away[dep.name] = time.monotonic()
            log.error("%s is unreachable (%s): %s; its client's errors are counted, not printed, until it "
                      "answers", dep.name.title(), _cause(exc), then)
        self.metrics.dependency_up.labels(dep.name).set(0)

    def dependency_ok(self, dep: Dependency) -> None:
        if dep.ok():
            away = self.health_away.pop(dep.name, None)
            summary = self.noise[dep.name].take()
            if away is None:
                log.info("%s answers%s", dep.name.title(), f" (before: {summary})" if summary else "")
            else:
                log.warning("%s answers again after %.1f s%s", dep.name.title(), time.monotonic() - away,
                            f"; meanwhile {summary}" if summary else "")
        self.metrics.dependency_up.labels(dep.name).set(1)

    def summarise_noise(self) -> None:
        """Once a minute: client warnings and errors suppressed while their dependency was up."""
        now = time.monotonic()
        if now - self._noise_said < 60.0:
            return
        self._noise_said = now
        for name, noise in self.noise.items():
            if getattr(self.health, name).up:
                summary = noise.take()
                if summary:
                    log.warning("%s client, last minute: %s", name.title(), summary)

    def redis_failed(self, exc: BaseException) -> None:
        self.dependency_failed(self.health.redis, exc, "pausing, retrying with backoff")

    def redis_ok(self) -> None:
        self.dependency_ok(self.health.redis)

    def kafka_failed(self, exc: BaseException) -> None:
        self.dependency_failed(self.health.kafka, exc, "holding the batch, retrying its commands with backoff")

    async def wait_for_redis(self) -> None:
        """Back off (with jitter) until Redis answers a PING. Returns as soon as it does."""
        attempt = 0
        while True:
            attempt += 1
            await asyncio.sleep(BACKOFF.compute(attempt))
            try:
                if self.built is None:
                    return
                await self.call(self.built.store.ping)
                self.redis_ok()
                return
            except TRANSIENT as exc:
                self.redis_failed(exc)
                unreachable = getattr(self.built.store, "unreachable", None)
                if unreachable is not None:  # a cluster: which nodes (/healthz names them)
                    try:
                        nodes = await self.call(unreachable)
                    except Exception:  # noqa: BLE001 - the topology itself unknown now
                        nodes = []
                    self.health.redis.unreachable = nodes

    async def worker(self) -> Worker:
        """The worker's parts, built once; waits for Redis (and retries) rather than failing."""
        attempt = 0
        while self.built is None:
            try:
                w = await self.call(self.build, self.settings)
            except OldLayout as exc:  # nothing a retry can cure: say what to do, and stop
                await self.stop_fatally(exc)
                raise
            except TRANSIENT as exc:
                self.redis_failed(exc)
                attempt += 1
                await asyncio.sleep(BACKOFF.compute(attempt))
                continue
            self.redis_ok()
            self.built = w
            w.source_ends = self.source_ends()
            self.schedulers["predict"].epoch_seconds = w.engine_config.track_epoch_seconds
            self.metrics.set_models(w.variants)
            self.metrics.set_objective(w.settings.hit_value, w.tier_config.transfer_cost, w.settings.shadows)
            for stage in w.stages.values():
                ck = stage.checkpoint
                ck.sensors.append(self.metrics.sensor(w.models))
                ck.on_flush_error = self.kafka_failed
                ck.on_flushed = lambda: self.dependency_ok(self.health.kafka)
                ck.offload = self.call
            tune_process(w.settings.batch_size)
        return self.built

    def source_ends(self) -> SourceEnds:
        """The sessions partitions' end offsets for the warm stage's check of entries' sequences,
        asked from a worker thread: the fetch high-watermark this consumer knows, else the broker
        (through the event loop, within two seconds; unknown if it does not answer)."""
        topic = self.settings.topic_sessions
        loop = asyncio.get_running_loop()

        def remote(src: int) -> int | None:
            tp = TP(topic, src)
            if threading.get_ident() == loop_thread:  # never block the loop on itself
                return None
            try:
                return asyncio.run_coroutine_threadsafe(self.app.consumer.highwaters(tp), loop).result(2.0).get(tp)
            except Exception:  # the broker away: the entries are taken unchecked, as before
                return None

        loop_thread = threading.get_ident()
        return SourceEnds(lambda src: self.highwater(topic, src), remote)

    def stop_partition(self, stop: PartitionStopped) -> None:
        """A partition whose records fail whatever is done with them, or whose state cannot be
        loaded: nothing more of it is applied or fetched until it is assigned again (a restart or
        a rebalance), and /livez says so; its state and offset in Redis stay as they were."""
        key = f"{stop.stage}/{stop.partition}"
        self.health.stopped[key] = f"at offset {stop.offset}: {type(stop.error).__name__}: {stop.error}"[:500]
        log.critical("%s partition %d stopped at offset %d: %r; its state in Redis is kept. /livez reports it; fix "
                     "the cause and restart the worker", stop.stage, stop.partition, stop.offset, stop.error,
                     exc_info=stop.error)
        stage = self.built.stages.get(stop.stage) if self.built is not None else None
        if stage is not None:
            stage.runtimes.pop(stop.partition, None)
        self.release(stop.stage, {stop.partition})

    async def stop_fatally(self, exc: Exception) -> None:
        self.health.fatal = str(exc)
        log.critical("%s", exc)
        await self.app.crash(exc)

    # ---- positions ------------------------------------------------------------------------------
    async def position(self, stage: Stage, partition: int, earliest: int, committed: int | None = None,
                       applied: int | None = None) -> int:
        """(Re)load a partition from Redis and decide where it resumes; waits out Redis outages."""
        while True:
            try:
                rt = await self.call(stage.reload, partition)
                resume = resume_offset(partition, rt.stored, earliest, committed, applied)
                if rt.stored is None or resume.reason == "rolled_back":
                    await self.call(rt.start_at, resume.offset)
                self.redis_ok()
                break
            except TRANSIENT as exc:
                self.redis_failed(exc)
                await self.wait_for_redis()
            except StateLost:
                raise
            except Exception as exc:  # its stored state cannot be loaded: stop it, loudly
                self.stop_partition(PartitionStopped(stage.name, partition, committed if committed is not None
                                                     else earliest, exc))
                return committed if committed is not None else earliest
        self.health.stopped.pop(f"{stage.name}/{partition}", None)
        if resume.loud:
            self.health.state_losses += 1
            self.metrics.state_losses.inc()
            log.error("%s (%s stage)", resume.detail, stage.name)
        log.info("%s partition %d resumes at offset %d (%s)", stage.name, partition, rt.next_offset, resume.reason)
        self.sought[(stage.topic, partition)] = time.monotonic()
        return rt.next_offset

    async def positions(self, committed, earliest) -> dict[TP, int]:
        """Called by faust's recovery after every rebalance (see transport.py): every assigned
        partition of the positioned topics is re-read from Redis and resumes where it says."""
        w = await self.worker()
        out = {}
        try:
            for stage in w.stages.values():
                mine = {tp.partition for tp in committed if tp.topic == stage.topic}
                self.release(stage.name)
                for p in list(stage.runtimes):
                    if p not in mine:
                        del stage.runtimes[p]
                for tp in sorted(tp for tp in committed if tp.topic == stage.topic):
                    old = stage.runtimes.get(tp.partition)
                    out[tp] = await self.position(stage, tp.partition, earliest.get(tp, 0), committed[tp],
                                                  old.next_offset if old is not None else None)
                if stage.forward is not None:
                    for tp in sorted(tp for tp in committed if tp.topic == stage.forward.topic):
                        out[tp] = await self.forwarded_position(stage, tp.partition, earliest.get(tp, 0))
        except StateLost as exc:
            await self.stop_fatally(exc)
            raise
        return out

    async def seek(self, topic: str, partition: int, offset: int) -> None:
        """Seek in the consumer's thread; when is remembered (runs fetched before it are stale)."""
        self.sought[(topic, partition)] = time.monotonic()
        await self.app.consumer.seek_wait({TP(topic, partition): offset})

    async def relocate(self, stage: Stage, partitions: list[int], applied: dict[int, int]) -> None:
        """Re-read partitions from Redis and seek them where Redis says (after a Redis outage, a
        fence, or a Redis that came back empty or older). What was received for them is dropped:
        the seek brings it again."""
        self.release(stage.name, set(partitions))
        for p in partitions:
            self.metrics.relocations.inc()
            tp = TP(stage.topic, p)
            try:
                earliest = (await self.app.consumer.earliest_offsets(tp)).get(tp, 0)
            except Exception as exc:  # the broker is away too: the next batch brings us back here
                log.warning("%s partition %d: earliest offset unknown (%s); assuming 0", stage.name, p, exc)
                earliest = 0
            try:
                offset = await self.position(stage, p, earliest, None, applied.get(p))
            except StateLost as exc:
                await self.stop_fatally(exc)
                return
            if p in stage.runtimes:
                await self.seek(stage.topic, p, offset)
                if stage.forward is not None:
                    await self.seek_forwarded(stage, p)

    def release(self, name: str, partitions: set[int] | None = None) -> None:
        """Drop what a stage received and has not applied (acknowledged to faust unapplied)."""
        for run in self.schedulers[name].release(partitions):
            run.ack()
        if name == "predict":
            self.release_forwarded(partitions)
        self.hold_ahead()

    def release_all(self) -> None:
        """Before faust waits for in-flight messages at a rebalance (transport.py)."""
        for name in self.schedulers:
            self.release(name)

    def on_revoked(self, revoked: Iterable[TP]) -> None:
        w = self.built
        if w is None:
            return
        for stage in w.stages.values():
            topics = {stage.topic, stage.forward.topic} if stage.forward is not None else {stage.topic}
            gone = {tp.partition for tp in revoked if tp.topic in topics}
            self.release(stage.name, gone)
            for p in gone:
                stage.runtimes.pop(p, None)

    # ---- the loop -------------------------------------------------------------------------------
    async def consume(self, name: str, stream) -> None:
        """An agent's body: each item is one fetched run of one partition (transport.py)."""
        try:
            await self._consume(name, stream)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # faust restarts the agent; /livez tells once it keeps crashing
            self.crashed(name, exc, "agent crashed", "faust restarts it, and its")
            raise

    def crashed(self, name: str, exc: BaseException, what: str, then: str) -> None:
        """A stage's agent or batch task failed on something no check foresaw: counted (/livez
        tells once it keeps failing), and the stage's partitions re-read from Redis, so what it
        had received comes again."""
        where = self._at.get(name)
        self.health.agent_crashed(name, exc, where)
        log.error("%s %s%s (%r); %s partitions are re-read from Redis so what it had received comes again", name,
                  what, f" at partition {where[0]} offset {where[1]}" if where else "", exc, then, exc_info=exc)
        if self.built is not None and name in self.built.stages:  # what it had received is gone
            stage = self.built.stages[name]
            self.spawn(f"recover_{name}", lambda: self.relocate(stage, sorted(stage.runtimes), {}))

    async def _consume(self, name: str, stream) -> None:
        scheduler = self.schedulers[name]
        runs = stream.noack()
        self.channels[name] = runs.channel
        async for event in runs.events():
            w = await self.worker()
            stage = w.stages[name]
            message = event.message
            rt = stage.runtimes.get(message.partition)
            if rt is None:  # not positioned yet, or revoked meanwhile: its owner replays from Redis
                event.ack()
                continue
            records = event.value
            if stage.forward is not None and message.topic == stage.forward.topic:  # events forwarded to it
                records = await self.call(rt.decode_forwarded, records)
                if stage.runtimes.get(message.partition) is not rt:  # reloaded meanwhile: read again from Redis's offset
                    event.ack()
                    continue
                inbox = self.inboxes.setdefault(message.partition, [])
                inbox.append((event, records))
                rt.hear(records)  # once in the inbox: the next batch takes them with what they allow
                if runs.channel.empty():
                    self.drain_soon(name)
                continue
            self._at[name] = (message.partition, rt.next_offset)
            records = scheduler.continuing(message.partition, records, rt.next_offset)
            if records is None:  # fetched before a seek, ahead of it: what the seek brings comes first
                event.ack()
                expected = scheduler.expected(message.partition, rt.next_offset)
                if self.lost(stage, message.partition, expected, [r[0] for r in event.value]):
                    # in a task of its own: the agent must go on taking runs (faust's delivery
                    # of the next one, which a seek waits for, waits for room in its buffer)
                    self.spawn(f"seek {stage.topic} {message.partition}",
                               partial(self.seek, stage.topic, message.partition, expected))
                continue
            if name == "predict":
                records = await self.call(rt.decode, records)
            if stage.forward is not None:  # forwarded (and flushed) before any of the run can be committed
                self.last_run_at[message.partition] = time.monotonic()
                await self.forward(stage, rt.route(records, False, partial(self.stamp, message.partition)), rt)
            if stage.runtimes.get(message.partition) is not rt:  # re-read meanwhile: the seek brings it again
                event.ack()
                continue
            scheduler.add(message.partition, event, records)
            if stage.forward is not None:  # how far it has read of its own, in hand: bounds what it applies of others'
                rt.in_hand = rt.read_clock
            if scheduler.full() or runs.channel.empty():
                self.drain_soon(name)

    def lost(self, stage: Stage, partition: int, expected: int, got: list[int]) -> bool:
        """Offsets past ``expected`` came instead of it (stale, or the consumer went past the
        position sought: records fetched before the seek moved it): whether it is time to seek
        the partition back to it, ``RESEEK_SECONDS`` since the last seek (said in the log). A yes
        counts as the seek from now on, so the runs still arriving before the caller's seek is
        done ask for none again."""
        now = time.monotonic()
        if now - self.sought.get((stage.topic, partition), 0.0) <= RESEEK_SECONDS:
            return False
        self.sought[(stage.topic, partition)] = now
        log.info("%s partition %d: offset %d did not come (got %d..%d): seeking to it", stage.name, partition,
                 expected, min(got), max(got))
        return True

    def drain_soon(self, name: str) -> None:
        """Apply what the stage's scheduler lets through, in a task of its own, so the agent goes
        on taking and decoding the runs faust delivers while a batch is processed, flushed and
        committed (it decoded the next run only once the batch was committed, and those decodes
        were gaps between batches). One such task per stage; asked again while it runs, it drains
        once more after it."""
        task = self._draining.get(name)
        if task is not None and not task.done():
            self._drain_again.add(name)
            return
        self._draining[name] = asyncio.ensure_future(self._drain_while_asked(name))

    async def _drain_while_asked(self, name: str) -> None:
        try:
            while True:
                self._drain_again.discard(name)
                await self.drain(name)
                if name not in self._drain_again:
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # what the agent's crash did when it drained inline
            self.crashed(name, exc, "batch failed", "its")

    async def drain(self, name: str, force: bool = False) -> None:
        """Apply what the stage's scheduler lets through now (batch by batch while a full batch is
        waiting, until the agent has runs to take: a partition behind may be among them)."""
        w = await self.worker()
        stage = w.stages[name]
        scheduler = self.schedulers[name]
        async with self.locks[name]:
            while True:
                clocks = {p: getattr(rt, "clock", 0.0) for p, rt in stage.runtimes.items()}
                lagging = self.lagging(stage)
                floors = None
                if stage.forward is not None:  # how far the events forwarded to each partition have come
                    now = time.monotonic()
                    local = stage.runtimes.keys()
                    floors = {p: rt.reach(now, local) for p, rt in stage.runtimes.items()}
                work, done = scheduler.take(clocks, lagging, force, floors)
                self.hold_ahead()
                if stage.forward is not None:
                    work, done = self.take_forwarded(stage, work, done, floors)
                if not work:
                    return
                try:
                    await self.apply(stage, work, lagging)
                except TRANSIENT as exc:
                    # the batch may or may not have been committed: Redis's offset will tell
                    applied = {p: rt.next_offset for p, rt in stage.runtimes.items()}
                    if isinstance(exc, StateMoved):  # Redis answers, with an offset not the runtime's
                        log.warning("%s; re-reading the stage's partitions before sending anything of the batch", exc)
                    else:
                        self.redis_failed(exc)
                        await self.wait_for_redis()
                    await self.relocate(stage, sorted(stage.runtimes), applied)
                finally:  # applied, or not (a fault, shutdown): released either way, as at a rebalance
                    for run in done:  # (faust would wait on them there); what was not applied is
                        run.ack()  # re-read from Redis's offsets
                if not scheduler.full() or self.runs_waiting(name):
                    return  # runs faust has delivered are taken first: one could be the partition behind

    def runs_waiting(self, name: str) -> bool:
        """Faust's buffer holds runs the stage's agent has not taken yet."""
        channel = self.channels.get(name)
        return channel is not None and not channel.empty()

    async def apply(self, stage: Stage, work: list[tuple[int, list]], lagging: set[int] = frozenset()) -> None:
        """``lagging``: the stage's partitions with records on the broker not received yet."""
        batch = []
        if stage.name == "predict":  # partitions with work this batch takes nothing of: their clocks
            waiting = lagging | {q for q, p in self.schedulers["predict"].pending.items() if p.records}
            work = work + [(q, []) for q in sorted(waiting - {p for p, _ in work})]
        for p, records in work:
            rt = stage.runtimes.get(p)
            if rt is None:
                continue  # revoked meanwhile: its owner replays from Redis
            if not records:
                batch.append((rt, []))
                continue
            run = contiguous_run(records, rt.next_offset)
            if not run and getattr(rt, "inbox", None):
                batch.append((rt, []))  # its forwarded events at least
            if not run:
                ahead = [r[0] for r in records if r[0] > rt.next_offset]
                if ahead and self.lost(stage, p, rt.next_offset, ahead):
                    self.release(stage.name, {p})
                    await self.seek(stage.topic, p, rt.next_offset)
                continue  # only records already applied, or ones fetched before a seek
            batch.append((rt, run))
        if not any(run or getattr(rt, "inbox", None) or getattr(rt, "has_due", bool)() for rt, run in batch):
            return
        result = await stage.checkpoint.run(batch)
        self.settled(stage.name, result)
        for out in result.fenced:  # the runtime said why (partition.py)
            await self.relocate(stage, [out.partition], {out.partition: out.start_offset})
        self.redis_ok()
        self.update_gauges(self.built)

    def settled(self, name: str, result) -> None:
        """After a checkpoint: partitions it stopped, the stage's progress, entries applied late."""
        for stop in result.stopped:
            self.stop_partition(stop)
        if result.committed:
            self.health.progressed(name)
        misrouted = sum(n for out in result.committed if out.changes is not None
                        for k, n in out.changes.counters.get("contract", {}).items() if k.startswith("misrouted:"))
        if misrouted:
            self.health.events_misrouted(int(misrouted))
        late = sum(out.late_entries for out in result.committed)
        if late:
            health = self.health
            before = health.late_recently()
            health.entries_late(late)
            if before <= health.late_alert < before + late:
                log.warning("the warm stage applied %d entries behind event time in the last minute (a source "
                            "taken for idle was not: a predict partition paused or far behind); the cache figures "
                            "are approximate meanwhile. /healthz says degraded", before + late)

    def lagging(self, stage: Stage) -> set[int]:
        """The stage's partitions with records on the broker it has not received (or whose end
        it does not know yet)."""
        scheduler = self.schedulers[stage.name]
        out = set()
        for p, rt in stage.runtimes.items():
            pending = scheduler.pending.get(p)
            received = pending.records[-1][0] + 1 if pending is not None and pending.records else rt.next_offset
            high = self.highwater(stage.topic, p)
            if high is None or high > received:
                out.add(p)
        return out

    def hold_ahead(self) -> None:
        """Stop fetching the partitions whose received records fill a batch (far ahead)."""
        consumer = getattr(self.app, "_consumer", None)
        w = self.built
        if consumer is None or w is None or not hasattr(consumer, "hold"):
            return
        held = {TP(w.stages[n].topic, q) for n, s in self.schedulers.items() if n in w.stages for q in s.held}
        for key in self.health.stopped:  # nothing of a stopped partition is applied: fetch none of it
            name, q = key.split("/")
            if name in w.stages:
                held.add(TP(w.stages[name].topic, int(q)))
        consumer.hold(held)

    async def cut_overdue_batches(self) -> None:
        """Timer: a batch whose oldest record waited ``SKIPCACHE_BATCH_WITHIN`` is cut now (not
        waiting for a partition that sends nothing), unless the stage's agent has runs in faust's
        buffer still to take (a partition behind may be among them): in a backlog, a forced cut
        then was a batch of a few records to an epoch's end, a third of the checkpoints. The
        batch runs as its own task, so the timer itself returns at once (faust warns about a
        timer that overlaps its interval)."""
        if self.built is None:
            return
        now = time.monotonic()
        for name, scheduler in self.schedulers.items():
            if self.runs_waiting(name):
                continue  # the agent has runs to take: it cuts when through them
            if name in self.built.stages and scheduler.overdue(now) and not self.locks[name].locked():
                self.spawn(name, lambda name=name: self.drain(name, force=True))

    # ---- timers ---------------------------------------------------------------------------------
    def highwater(self, topic: str, partition: int) -> int | None:
        try:
            return self.app.consumer.highwater(TP(topic, partition))
        except Exception:  # not fetched yet
            return None

    def lag(self, topic: str, partition: int, next_offset: int) -> int | None:
        """Records behind the fetch high-watermark; None before the first fetch."""
        high = self.highwater(topic, partition)
        return None if high is None else max(0, high - next_offset)

    def lags(self, w: Worker) -> dict[str, int]:
        """``stage/partition`` -> records behind the fetch high-watermark."""
        out = {}
        for stage in w.stages.values():
            for part, rt in stage.runtimes.items():
                behind = self.lag(stage.topic, part, rt.next_offset)
                if behind is not None:
                    out[f"{stage.name}/{part}"] = behind
        return out

    def update_gauges(self, w: Worker) -> None:
        m = self.metrics
        p = w.policy
        m.threshold.labels("medium").set(p.threshold)
        m.threshold.labels("fast").set(p.fast_threshold)
        warm = w.stages.get("warm")
        if warm is not None:
            m.cost.set(sum(rt.warmer.tiers.cost_per_day for rt in warm.runtimes.values()))
        for key, lag in self.lags(w).items():
            stage, part = key.split("/")
            m.lag.labels(stage, part).set(lag)

    def readiness(self) -> tuple[bool, dict]:
        w = self.built
        current = self.lags(w) if w is not None else {}
        if w is not None:
            self.health.observe({f"{s.name}/{p}": rt.next_offset for s in w.stages.values()
                                 for p, rt in s.runtimes.items()})
        ready, body = self.health.report(current)
        self.metrics.ready.set(1 if ready else 0)
        for key in current:
            stage, part = key.split("/")
            self.metrics.stalled.labels(stage, part).set(1 if key in body["stalled_partitions"] else 0)
        if w is not None:
            for stage in w.stages.values():  # every partition's series, zero while all is well
                for p in range(stage.partitions):
                    key = f"{stage.name}/{p}"
                    self.metrics.stopped_partitions.labels(stage.name, str(p)).set(1 if key in self.health.stopped else 0)
                    self.metrics.unowned.labels(stage.name, str(p)).set(1 if key in self.health.unowned else 0)
            body.update(stages={s.name: sorted(s.runtimes) for s in w.stages.values()},
                        model=w.artifact.model, model_version=w.artifact.version)
            if self.metrics.contract_totals:  # what producers send otherwise than the contract asks
                body["producers"] = dict(self.metrics.contract_totals)
            warm = w.stages.get("warm")
            if warm is not None:
                body["thresholds_in_use"] = {str(p): [rt.policy.threshold, rt.policy.fast_threshold]
                                             for p, rt in warm.runtimes.items()}
        return ready, body

    async def backlog(self, topic: str, store, partitions: list[int]) -> dict[int, tuple[int, int]] | None:
        """Partition -> (its offset in Redis, records on the broker past it), for any worker's
        partitions (None: the broker or Redis away now; their own checks report it)."""
        ends = await self.ends(topic, partitions)
        if ends is None:
            return None
        try:
            offsets = await self.call(lambda: [store.offset(p) for p in partitions])
        except Exception:  # noqa: BLE001 - Redis's error
            return None
        return {p: (offset, ends.get(p, 0) - offset) for p, offset in zip(partitions, offsets)}

    async def sources_behind(self, w: Worker) -> set[int] | None:
        """Sessions partitions holding records their predict stage has not committed (None: not
        known now). A silent source among them is slow, not idle (``stages/warm.py``). Those this
        process predicts are known by its consumer too, from the fetches' high-watermark: exact
        where the broker's end offset is not (Tansu's counts only the first record of the last
        record batch, INFRA.md)."""
        s = self.settings
        behind = await self.backlog(s.topic_sessions, w.store, list(range(s.partitions)))
        return None if behind is None else {p for p, (_, lag) in behind.items() if lag > 0} | self.predicting(w)

    async def release_idle_entries(self) -> None:
        """The warm stage holds entries back until every predict partition's clock has passed
        them; once a source goes quiet (idle), what it held back is released here. Quiet is not
        enough: a check reads, from the broker and Redis, which sessions partitions hold records
        predict has not committed (those are waited for), then the warm partition's end offset
        on the broker; what the quiet sources held back is released once the partition has
        applied up to that end (a batch's entries go out before its commit), so every entry of
        every record they had before the check is in. What they send next comes of records
        produced after it, which a producer in event-time order (live traffic, a replay) stamps
        no earlier than anything released now."""
        w = self.built
        warm = w.stages.get("warm") if w is not None else None
        if warm is None:
            return
        now = time.time()
        waiting = {q: rt for q, rt in list(warm.runtimes.items()) if rt.waits_on_quiet_source(now)}
        quiet = set().union(*(rt.quiet_sources(now) for rt in waiting.values()))
        if not quiet:  # a steady flow: the batches themselves move the watermark
            self._quiet_ends.clear()
            return
        given_up = any(rt.quiet_sources(now, BEHIND_WALL_SECONDS) for rt in waiting.values())
        if quiet <= self.predicting(w) and not given_up:
            return  # slow here, as this process's consumer knows for free: no round trip to find it out
        checked, ends = time.monotonic(), self._quiet_ends
        unchecked = [q for q in waiting if q not in ends or checked - ends[q][1] > QUIET_CHECK_SECONDS]
        if unchecked:
            if checked - self._quiet_checked < CAUGHT_UP_SECONDS:
                return  # one check per quiet spell's length: a slow source is not asked about ten times a second
            self._quiet_checked = checked
            behind = await self.sources_behind(w)
            if behind is not None:
                for rt in warm.runtimes.values():
                    rt.behind = behind
                if quiet <= behind and not given_up:
                    return  # every quiet source is slow: nothing to release (nor a commit to write)
            # only a partition that has read all there is can tell a silent source from its own lag
            fresh = await self.ends(warm.topic, unchecked)
            for q in unchecked:
                end = fresh.get(q) if fresh is not None else self.highwater(warm.topic, q)
                if end is not None:
                    ends[q] = (end, checked)
        done = [rt for q, rt in waiting.items() if q in ends and rt.next_offset >= ends[q][0]]
        if not done:
            return
        for rt in done:
            del ends[rt.partition]
        async with self.locks["warm"]:
            try:
                result = await warm.checkpoint.run([(rt, []) for rt in done])
            except TRANSIENT as exc:
                self.redis_failed(exc)  # the batch loop does the waiting and re-reading
                return
        self.settled("warm", result)
        for out in result.fenced:
            await self.relocate(warm, [out.partition], {out.partition: out.start_offset})

    def predicting(self, w: Worker) -> set[int]:
        """Sessions partitions this process predicts that hold records it has not committed (by
        its consumer's high-watermark, free to read): slow, not quiet."""
        stage = w.stages.get("predict")
        if stage is None:
            return set()
        return {p for p, rt in stage.runtimes.items() if (self.lag(stage.topic, p, rt.next_offset) or 0) > 0}

    async def ends(self, topic: str, partitions: list[int]) -> dict[int, int] | None:
        """The partitions' end offsets, read from the broker now, of those it answered for (None:
        it did not answer)."""
        tps = [TP(topic, p) for p in partitions]
        try:
            ends = await asyncio.wait_for(self.app.consumer.highwaters(*tps), 2.0)
        except Exception:  # noqa: BLE001 - a timeout, the broker's error
            return None
        return {tp.partition: ends[tp] for tp in tps if tp in ends}

    async def refresh_thresholds(self) -> None:
        w = self.built
        if w is None:
            return
        try:
            await self.call(w.refresh_thresholds)
            self.redis_ok()
        except TRANSIENT as exc:
            self.redis_failed(exc)  # keep the thresholds in force; the batch loop does the waiting
        self.update_gauges(w)

    async def check_kafka(self, topics: dict[str, tuple[str, int]]) -> None:
        """Kafka is up when the topics' earliest offsets can be read, within two seconds. The
        check runs as its own task (the timer returns at once: faust warns of a timer that
        overlaps its interval, as a check waiting on a broker that is away would)."""
        self.spawn("check_kafka", lambda: self._check_kafka(topics))

    def spawn(self, name: str, coroutine: Callable) -> None:
        """Run ``coroutine()`` as a task named ``name`` unless the last one is still running."""
        running = self._cutting.get(name)
        if running is None or running.done():
            task = self._cutting[name] = asyncio.ensure_future(coroutine())
            task.add_done_callback(_log_failure)

    async def _check_kafka(self, topics: dict[str, tuple[str, int]]) -> None:
        try:
            await asyncio.wait_for(self.app.consumer.earliest_offsets(
                *(TP(topic, p) for topic, n in topics.values() for p in range(n))), 2.0)
        except Exception as exc:  # TimeoutError after 2 s, or the broker's own error
            self.dependency_failed(self.health.kafka, exc, "the consumer keeps retrying")
        else:
            self.dependency_ok(self.health.kafka)
        self.summarise_noise()
        self.readiness()

    async def check_stored_offsets(self) -> None:
        """Timer: the offsets the store holds for an idle stage's partitions, against what they
        applied. A batch finds a store that went back when it reads (``StateMoved``); a stage with
        nothing to apply reads nothing, and a failover that lost its last acknowledged commits
        (asynchronous replication) would leave it believing it is done, silently. A busy stage (its
        lock held) is skipped: its next batch reads."""
        w = self.built
        if w is None:
            return
        for name, stage in w.stages.items():
            lock = self.locks[name]
            if lock.locked() or not stage.runtimes:
                continue
            async with lock:
                runtimes = dict(stage.runtimes)
                try:
                    stored = await self.call(lambda: {p: rt.store.offset(p) for p, rt in runtimes.items()})
                except TRANSIENT:
                    return  # away: the batches' and the health checks' own waits tell it
                # (none stored reads as 0, as a fresh partition being positioned has applied)
                moved = {p: (stored[p], rt.next_offset) for p, rt in runtimes.items()
                         if stage.runtimes.get(p) is rt and stored[p] != rt.next_offset}
                if moved:
                    log.warning("%s partitions %s: the store holds offsets %s, the runtimes applied up to %s (the "
                                "store went back, or another worker moved them); re-reading them", name, sorted(moved),
                                [moved[p][0] for p in sorted(moved)], [moved[p][1] for p in sorted(moved)])
                    await self.relocate(stage, sorted(moved), {p: applied for p, (_, applied) in moved.items()})

    async def check_group(self) -> None:
        self.spawn("check_group", self._check_group)

    async def _check_group(self) -> None:
        """Timer: partitions of this worker's stages that it does not own, with lag, whose offset
        in Redis has not moved for ``SKIPCACHE_UNOWNED_SECONDS``: no consumer in the group works
        on them (a worker died and the group has not noticed yet, or one is stuck)."""
        w = self.built
        if w is None:
            return
        if not any(stage.runtimes for stage in w.stages.values()):
            self.health.unowned = {}  # not in the group yet (or between assignments): nothing to compare
            return
        now, limit = time.monotonic(), self.settings.unowned_seconds
        unowned, seen = {}, {}
        for stage in w.stages.values():
            others = [p for p in range(stage.partitions) if p not in stage.runtimes]
            if not others:
                continue
            behind = await self.backlog(stage.topic, stage.store, others)
            if behind is None:
                return
            for p, (offset, lag) in behind.items():
                key = f"{stage.name}/{p}"
                if lag <= 0:
                    continue  # nothing to do there: whether anybody owns it does not show, nor matter
                last = self._others.get(key)  # since when it has had lag at this offset
                seen[key] = last if last is not None and last[0] == offset else (offset, now)
                if now - seen[key][1] >= limit:
                    unowned[key] = lag
        self._others = seen
        gone = self.health.unowned.keys() - unowned.keys()
        for key in sorted(unowned.keys() - self.health.unowned.keys()):
            log.warning("%s partition %s has %d records to do and no consumer in the group moves it (a worker "
                        "gone and the group not rebalanced yet, or one stuck)", *key.split("/"), unowned[key])
        for key in sorted(gone):
            log.info("%s partition %s moves again", *key.split("/"))
        self.health.unowned = unowned  # its gauges: at the next readiness (every second, and each scrape)

    async def close_sinks(self) -> None:
        """At shutdown: the stages' batch tasks stop first, and so do the timers' (a batch cut at
        its deadline, a recovery, a check): a batch not committed is read again from Redis's
        offset. Then the sinks close, with nothing left to add to them."""
        tasks = [t for t in (*self._draining.values(), *self._cutting.values()) if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        w = self.built
        if w is not None:
            for stage in w.stages.values():
                for sink in stage.checkpoint.sinks.values():
                    await sink.close()
        self.executor.shutdown(wait=False)
