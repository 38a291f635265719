"""The live worker, a Faust app built by ``create_app(settings)``: `skipcache worker`, or
`faust -A stream.faust_main worker`. Importing this module builds and connects nothing.

Two stages, each an agent (``SKIPCACHE_STAGE`` picks one or both; both by default):
- **predict** consumes pozytywka.sessions (keyed by user) in batches: parse, features, scores,
  accuracy; it publishes one message of entries per warm partition to the entries topic;
- **warm** consumes the entries topic (keyed by track): the one placement of its tracks, the
  policy, eviction and cache figures; it publishes pozytywka.cache-commands.
Each stage flushes what it publishes, then commits its state and the partition's offset in one
Redis transaction (``stream/worker/checkpoint.py``).

Positions: where a partition resumes is the offset in Redis (``stream/worker/positions.py``), applied
by faust's own post-rebalance seek (``stream/worker/transport.py``), so neither faust's recovery
nor the broker's committed offsets can move the stream afterwards.

Faults: a Redis call that fails (connection lost, timeout) makes the worker unready, wait with
jittered exponential backoff, and, once Redis answers, re-read the stage's partitions from Redis
and seek to where Redis says; a fence or a Redis that came back empty or older goes the same way.
A partition whose records the topic no longer holds stops the worker with an error saying so."""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import faust
import redis
from faust.types import TP
from redis.backoff import ExponentialWithJitterBackoff

from stream.worker.transport import Transport
from stream.worker.health import Dependency, Health
from stream.worker.metrics import WorkerMetrics
from stream.worker.positions import StateLost, resume_offset
from stream.settings import Settings
from stream.bootstrap import Stage, Worker, build_worker

log = logging.getLogger("skipcache.worker")
BACKOFF = ExponentialWithJitterBackoff(cap=5.0, base=0.1)
RESEEK_SECONDS = 1.0
"""Records fetched before a seek can still arrive after it and move the consumer past the
position sought; while the awaited offset does not come, the worker seeks again this often."""


def contiguous_run(records: list[tuple], start: int) -> list[tuple]:
    """The records at offsets start, start+1, ... wherever they sit in ``records``: a batch can mix
    records fetched before a seek with those fetched after it, and only an unbroken run from the
    partition's next offset may be applied."""
    if records and records[0][0] == start and records[-1][0] == start + len(records) - 1:
        return records  # the usual batch: already that run
    at = {r[0]: r for r in records}
    run = []
    while start in at:
        run.append(at[start])
        start += 1
    return run


def exit_if_shutdown_hangs(app: faust.App, grace: float) -> None:
    """A stopping worker gets ``grace`` seconds, then exits anyway (releasing its web port):
    shutdown must not hang on a dependency that went away. State is exactly-once in Redis."""

    def watch() -> None:
        while not app.should_stop:
            time.sleep(0.5)
        time.sleep(grace)
        log.error("shutdown did not finish within %.0f s (a dependency away?): exiting anyway", grace)
        logging.shutdown()
        os._exit(1)

    threading.Thread(target=watch, name="shutdown-watchdog", daemon=True).start()


def create_app(settings: Settings, build: Callable[[Settings], Worker] = build_worker) -> faust.App:
    """The worker's Faust app; ``build`` makes its parts once it starts (tests pass fakes)."""
    settings.check_web_bind()
    app = faust.App(
        settings.app_id,
        datadir=str(Path(tempfile.gettempdir()) / f"{settings.app_id}-faust"),
        broker=f"kafka://{settings.kafka_bootstrap}",
        broker_session_timeout=settings.session_timeout,
        broker_heartbeat_interval=2.0,
        consumer_auto_offset_reset="earliest",
        topic_partitions=settings.partitions,
        topic_allow_declare=True,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        web_port=settings.web_port,
        stream_buffer_maxsize=max(4096, settings.batch_size * 4),
        producer_linger_ms=5,
        table_cleanup_interval=3600,
    )
    holder: dict[str, Worker | None] = {"worker": None}
    locks = {"predict": asyncio.Lock(), "warm": asyncio.Lock()}
    sought: dict[tuple[str, int], float] = {}  # (topic, partition) -> when the worker last sought it
    health = Health(settings.stall_seconds)
    metrics = WorkerMetrics()

    async def redis_call(fn, *args):
        """A blocking store call off the event loop, so /healthz and heartbeats stay answered."""
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    def dependency_failed(dep: Dependency, exc: BaseException, then: str) -> None:
        """Count the failure; log once when the dependency goes, saying what the worker does."""
        metrics.dependency_errors.labels(dep.name).inc()
        if dep.failed(exc):
            log.error("%s is unreachable (%r): %s", dep.name.title(), exc, then)
        metrics.dependency_up.labels(dep.name).set(0)

    def dependency_ok(dep: Dependency) -> None:
        if dep.ok():
            log.warning("%s answers", dep.name.title())
        metrics.dependency_up.labels(dep.name).set(1)

    def redis_failed(exc: BaseException) -> None:
        dependency_failed(health.redis, exc, "pausing, retrying with backoff")

    def redis_ok() -> None:
        dependency_ok(health.redis)

    def kafka_failed(exc: BaseException) -> None:
        dependency_failed(health.kafka, exc, "holding the batch, retrying its commands with backoff")

    async def wait_for_redis() -> None:
        """Back off (with jitter) until Redis answers a PING. Returns as soon as it does."""
        attempt = 0
        while True:
            attempt += 1
            await asyncio.sleep(BACKOFF.compute(attempt))
            try:
                store = holder["worker"].store if holder["worker"] is not None else None
                if store is None:
                    return
                await redis_call(store.ping)
                redis_ok()
                return
            except redis.RedisError as exc:
                redis_failed(exc)

    async def worker() -> Worker:
        """The worker's parts, built once; waits for Redis (and retries) rather than failing."""
        attempt = 0
        while holder["worker"] is None:
            try:
                w = await redis_call(build, settings)
            except redis.RedisError as exc:
                redis_failed(exc)
                attempt += 1
                await asyncio.sleep(BACKOFF.compute(attempt))
                continue
            redis_ok()
            holder["worker"] = w
            metrics.set_models(w.variants)
            for stage in w.stages.values():
                stage.checkpoint.sensors.append(metrics.sensor(w.models))
                stage.checkpoint.on_flush_error = kafka_failed
                stage.checkpoint.on_flushed = lambda: dependency_ok(health.kafka)
            # the catalogue, the model and faust live as long as the process: keep the cyclic
            # collector from rescanning them on every full collection
            gc.collect()
            gc.freeze()
        return holder["worker"]

    async def stop_fatally(exc: StateLost) -> None:
        health.fatal = str(exc)
        log.critical("%s", exc)
        await app.crash(exc)

    async def position(stage: Stage, partition: int, earliest: int, committed: int | None = None,
                       applied: int | None = None) -> int:
        """(Re)load a partition from Redis and decide where it resumes; waits out Redis outages."""
        while True:
            try:
                rt = await redis_call(stage.reload, partition)
                resume = resume_offset(partition, rt.stored, earliest, committed, applied)
                if rt.stored is None or resume.reason == "rolled_back":
                    await redis_call(rt.start_at, resume.offset)
                redis_ok()
                break
            except redis.RedisError as exc:
                redis_failed(exc)
                await wait_for_redis()
        if resume.loud:
            health.state_losses += 1
            metrics.state_losses.inc()
            log.error("%s (%s stage)", resume.detail, stage.name)
        log.info("%s partition %d resumes at offset %d (%s)", stage.name, partition, rt.next_offset, resume.reason)
        sought[(stage.topic, partition)] = time.monotonic()
        return rt.next_offset

    async def positions(committed, earliest) -> dict[TP, int]:
        """Called by faust's recovery after every rebalance (see faust_transport)."""
        w = await worker()
        out = {}
        try:
            for stage in w.stages.values():
                mine = {tp.partition for tp in committed if tp.topic == stage.topic}
                for p in list(stage.runtimes):
                    if p not in mine:
                        del stage.runtimes[p]
                for tp in sorted(tp for tp in committed if tp.topic == stage.topic):
                    old = stage.runtimes.get(tp.partition)
                    out[tp] = await position(stage, tp.partition, earliest.get(tp, 0), committed[tp],
                                             old.next_offset if old is not None else None)
        except StateLost as exc:
            await stop_fatally(exc)
            raise
        return out

    built = settings.stages  # checks SKIPCACHE_STAGE before anything starts
    topics = {"predict": (settings.topic_sessions, settings.partitions),
              "warm": (settings.topic_entries, settings.warm_partitions)}
    app.transport = Transport(app.conf.broker_consumer, app, fetch_max_wait_ms=settings.fetch_max_wait_ms,
                              positions=positions, positioned_topics={topics[n][0] for n in built})

    async def seek(stage: Stage, partition: int, offset: int) -> None:
        sought[(stage.topic, partition)] = time.monotonic()
        await app.consumer.seek_wait({TP(stage.topic, partition): offset})  # in the consumer's thread

    async def relocate(stage: Stage, partitions: list[int], applied: dict[int, int]) -> None:
        """Re-read partitions from Redis and seek them where Redis says (after a Redis outage, a
        fence, or a Redis that came back empty or older)."""
        for p in partitions:
            metrics.relocations.inc()
            tp = TP(stage.topic, p)
            try:
                earliest = (await app.consumer.earliest_offsets(tp)).get(tp, 0)
            except Exception as exc:  # the broker is away too: the next batch brings us back here
                log.warning("%s partition %d: earliest offset unknown (%s); assuming 0", stage.name, p, exc)
                earliest = 0
            try:
                offset = await position(stage, p, earliest, None, applied.get(p))
            except StateLost as exc:
                await stop_fatally(exc)
                return
            if p in stage.runtimes:
                await seek(stage, p, offset)

    @app.on_partitions_revoked.connect
    async def on_revoked(sender, revoked, **kwargs) -> None:
        w = holder["worker"]
        if w is None:
            return
        for stage in w.stages.values():
            for tp in revoked:
                if tp.topic == stage.topic:
                    stage.runtimes.pop(tp.partition, None)

    def agent(name: str) -> None:
        topic, partitions = topics[name]
        channel = app.topic(topic, key_type=bytes, value_type=bytes, key_serializer="raw",
                            value_serializer="raw", partitions=partitions)

        async def consume(stream):
            async for batch in stream.take_events(settings.batch_size, within=settings.batch_within):
                w = await worker()
                stage = w.stages[name]
                try:
                    async with locks[name]:  # one checkpoint at a time per stage (see release_idle_entries)
                        await handle(stage, batch)
                except redis.RedisError as exc:
                    # the batch may or may not have been committed: Redis's offset will tell
                    redis_failed(exc)
                    applied = {p: rt.next_offset for p, rt in stage.runtimes.items()}
                    await wait_for_redis()
                    await relocate(stage, sorted(stage.runtimes), applied)

        consume.__name__ = f"{name}_stage"  # the agent's name in faust (and its logs)
        app.agent(channel, name=f"skipcache.{name}")(consume)

    for name in built:
        agent(name)

    async def handle(stage: Stage, batch) -> None:
        by_partition: dict[int, list] = defaultdict(list)
        for ev in batch:
            m = ev.message
            by_partition[m.partition].append((m.offset, m.value, m.timestamp))
        work = []
        for p, records in by_partition.items():
            rt = stage.runtimes.get(p)
            if rt is None:
                continue  # not positioned yet, or revoked meanwhile: its owner replays from Redis
            run = contiguous_run(records, rt.next_offset)
            if not run:
                ahead = [r[0] for r in records if r[0] > rt.next_offset]
                if ahead and time.monotonic() - sought.get((stage.topic, p), 0.0) > RESEEK_SECONDS:
                    log.info("%s partition %d: offset %d did not come (got %d..%d): seeking to it", stage.name,
                             p, rt.next_offset, min(ahead), max(ahead))
                    await seek(stage, p, rt.next_offset)
                continue  # only records already applied, or ones fetched before a seek
            work.append((rt, run))
        if not work:
            return
        result = await stage.checkpoint.run(work)
        for out in result.fenced:
            log.warning("%s partition %d: fenced at offset %d (Redis holds another offset); re-reading it",
                        stage.name, out.partition, out.start_offset)
            await relocate(stage, [out.partition], {out.partition: out.start_offset})
        redis_ok()
        update_gauges(await worker())

    def lag(topic: str, partition: int, next_offset: int) -> int | None:
        """Records behind the fetch high-watermark; None before the first fetch."""
        try:
            high = app.consumer.highwater(TP(topic, partition))
        except Exception:  # not fetched yet
            return None
        return None if high is None else max(0, high - next_offset)

    def lags(w: Worker) -> dict[str, int]:
        """``stage/partition`` -> records behind the fetch high-watermark."""
        out = {}
        for stage in w.stages.values():
            for part, rt in stage.runtimes.items():
                behind = lag(stage.topic, part, rt.next_offset)
                if behind is not None:
                    out[f"{stage.name}/{part}"] = behind
        return out

    def update_gauges(w: Worker) -> None:
        p = w.policy
        metrics.threshold.labels("medium").set(p.threshold)
        metrics.threshold.labels("fast").set(p.fast_threshold)
        warm = w.stages.get("warm")
        if warm is not None:
            metrics.cost.set(sum(rt.warmer.tiers.cost_per_day for rt in warm.runtimes.values()))
        for key, lag in lags(w).items():
            stage, part = key.split("/")
            metrics.lag.labels(stage, part).set(lag)

    def readiness() -> tuple[bool, dict]:
        w = holder["worker"]
        current = lags(w) if w is not None else {}
        if w is not None:
            health.observe({f"{s.name}/{p}": rt.next_offset for s in w.stages.values()
                            for p, rt in s.runtimes.items()})
        ready, body = health.report(current)
        metrics.ready.set(1 if ready else 0)
        for key in current:
            stage, part = key.split("/")
            metrics.stalled.labels(stage, part).set(1 if key in body["stalled_partitions"] else 0)
        if w is not None:
            body.update(stages={s.name: sorted(s.runtimes) for s in w.stages.values()},
                        model=w.artifact.model, model_version=w.artifact.version)
            warm = w.stages.get("warm")
            if warm is not None:
                body["thresholds_in_use"] = {str(p): [rt.policy.threshold, rt.policy.fast_threshold]
                                             for p, rt in warm.runtimes.items()}
        return ready, body

    async def sources_behind(w: Worker) -> set[int] | None:
        """Sessions partitions holding records their predict stage has not committed (None: not
        known now). A silent source among them is slow, not idle (``warm_runtime.py``)."""
        tps = [TP(settings.topic_sessions, p) for p in range(settings.partitions)]
        try:
            ends = await asyncio.wait_for(app.consumer.highwaters(*tps), 2.0)
            done = await redis_call(lambda: [w.store.offset(p) for p in range(settings.partitions)])
        except Exception:  # the broker or Redis away: their own checks report it
            return None
        return {tp.partition for tp in tps if done[tp.partition] < ends.get(tp, 0)}

    @app.timer(1.0)
    async def release_idle_entries() -> None:
        """The warm stage holds entries back until every predict partition's clock has passed
        them; once a source goes quiet (idle), what it held back is released here."""
        w = holder["worker"]
        warm = w.stages.get("warm") if w is not None else None
        if warm is None:
            return
        now = time.time()
        waiting = {q: rt for q, rt in list(warm.runtimes.items()) if rt.waits_on_quiet_source(now)}
        if not waiting:  # a steady flow: the batches themselves move the watermark
            return
        behind = await sources_behind(w)
        if behind is not None:
            for rt in warm.runtimes.values():
                rt.behind = behind
        # only a partition that has read all there is can tell a silent source from its own lag
        done = [rt for q, rt in waiting.items() if lag(warm.topic, q, rt.next_offset) == 0]
        if not done:
            return
        async with locks["warm"]:
            try:
                result = await warm.checkpoint.run([(rt, []) for rt in done])
            except redis.RedisError as exc:
                redis_failed(exc)  # the batch loop does the waiting and re-reading
                return
        for out in result.fenced:
            await relocate(warm, [out.partition], {out.partition: out.start_offset})

    @app.timer(0.5)
    async def refresh_thresholds() -> None:
        w = holder["worker"]
        if w is None:
            return
        try:
            await redis_call(w.refresh_thresholds)
            redis_ok()
        except redis.RedisError as exc:
            redis_failed(exc)  # keep the thresholds in force; the batch loop does the waiting
        update_gauges(w)

    @app.timer(1.0)
    async def check_kafka() -> None:
        """Kafka is up when the topics' earliest offsets can be read, within two seconds."""
        try:
            await asyncio.wait_for(app.consumer.earliest_offsets(
                *(TP(topics[n][0], p) for n in built for p in range(topics[n][1]))), 2.0)
        except Exception as exc:  # TimeoutError after 2 s, or the broker's own error
            dependency_failed(health.kafka, exc, "the consumer keeps retrying")
        else:
            dependency_ok(health.kafka)
        readiness()

    @app.on_before_shutdown.connect
    async def close_sinks(sender, **kwargs) -> None:
        w = holder["worker"]
        if w is not None:
            for stage in w.stages.values():
                for sink in stage.checkpoint.sinks.values():
                    await sink.close()

    @app.task
    async def start() -> None:
        exit_if_shutdown_hangs(app, settings.shutdown_grace_seconds)
        await worker()

    from stream.worker.web import register_views

    register_views(app, settings, lambda: holder["worker"], metrics, readiness, redis_call)
    return app
