"""The live worker, a Faust app: `faust -A stream.app worker` or `skipcache worker`.

It consumes pozytywka.sessions in batches, runs each partition's batch through the same pipeline
as the simulation (state in Redis), publishes cache decisions and dead letters, flushes them, and
then commits state and the partition's offset in one Redis transaction. On assignment it seeks
each partition to the offset stored in Redis, so the broker's committed offsets do not matter."""
from __future__ import annotations

import gc
import logging
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import faust
import orjson
from faust.types import TP

from .metrics import WorkerMetrics
from .publish import BatchPublisher
from .runtime import OffsetGap
from .settings import Settings
from .wiring import Worker, build_worker

log = logging.getLogger("skipcache.worker")


def _limit_fetch_wait(ms: int) -> None:
    """faust-streaming hard-codes fetch_max_wait_ms=1500 for its consumer. Against Tansu a fetch
    with little data waits that long (measured: p50 produce-to-decision 624 ms at 2,000 events/s),
    so give faust's driver, and only it, a consumer class with a shorter wait."""
    import types

    import aiokafka
    import faust.transport.drivers.aiokafka as driver

    class Consumer(aiokafka.AIOKafkaConsumer):
        def __init__(self, *args, **kwargs):
            kwargs["fetch_max_wait_ms"] = ms
            super().__init__(*args, **kwargs)

    if not isinstance(driver.aiokafka, types.SimpleNamespace):
        driver.aiokafka = types.SimpleNamespace(**{**vars(aiokafka), "AIOKafkaConsumer": Consumer})
    else:
        driver.aiokafka.AIOKafkaConsumer = Consumer


def create_app(settings: Settings) -> faust.App:
    settings.check_web_bind()
    _limit_fetch_wait(settings.fetch_max_wait_ms)
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
    sessions = app.topic(settings.topic_sessions, key_type=bytes, value_type=bytes, key_serializer="raw",
                         value_serializer="raw", partitions=settings.partitions)
    holder: dict[str, Worker | None] = {"worker": None}
    seeking: dict[int, int] = {}
    publisher: dict[str, BatchPublisher | None] = {"p": None}

    metrics = WorkerMetrics()

    def worker() -> Worker:
        if holder["worker"] is None:
            holder["worker"] = build_worker(settings)
            metrics.set_models(holder["worker"].variants)
            # the catalogue, the model and faust live as long as the process: keep the cyclic
            # collector from rescanning them on every full collection
            gc.collect()
            gc.freeze()
        return holder["worker"]

    @app.on_partitions_assigned.connect
    async def on_assigned(sender, assigned, **kwargs) -> None:
        w = worker()
        mine = {tp.partition for tp in assigned if tp.topic == settings.topic_sessions}
        for p in list(w.runtimes):
            if p not in mine:
                del w.runtimes[p]
        for p in sorted(mine):
            w.runtimes.pop(p, None)  # reload: another worker may have moved it on meanwhile
            rt = w.runtime(p)
            seeking[p] = rt.next_offset
            await app.consumer.seek(TP(settings.topic_sessions, p), rt.next_offset)
            log.info("partition %d: resuming at offset %d (from Redis)", p, rt.next_offset)

    @app.on_partitions_revoked.connect
    async def on_revoked(sender, revoked, **kwargs) -> None:
        w = holder["worker"]
        for tp in revoked:
            if w is not None and tp.topic == settings.topic_sessions:
                w.runtimes.pop(tp.partition, None)

    @app.agent(sessions)
    async def process(stream):
        async for batch in stream.take_events(settings.batch_size, within=settings.batch_within):
            await handle(batch)

    async def handle(batch) -> None:
        started = time.perf_counter()
        w = worker()
        by_partition: dict[int, list] = defaultdict(list)
        for ev in batch:
            m = ev.message
            by_partition[m.partition].append((m.offset, m.value, m.timestamp))
        outputs = []
        for p, records in by_partition.items():
            rt = w.runtimes.get(p)
            if rt is None:
                continue  # revoked meanwhile: its new owner replays from Redis
            if p in seeking:
                # after a seek, drop what was buffered before it until the expected offset shows up
                records = [r for r in records if r[0] >= seeking[p]]
                if not records or records[0][0] > seeking[p]:
                    continue
                del seeking[p]
            try:
                outputs.append((rt, rt.process(records)))
            except OffsetGap as gap:
                log.warning("%s: seeking back", gap)
                seeking[p] = gap.expected
                await app.consumer.seek(TP(settings.topic_sessions, p), gap.expected)
        if not outputs:
            return
        if publisher["p"] is None:
            publisher["p"] = BatchPublisher(app.producer._ensure_producer())
        models = {v: a.model for v, a in w.variants.items()}
        letters, commands = [], []
        for rt, out in outputs:
            for offset, reason, raw in out.dead_letters:
                letters.append((None, orjson.dumps({"reason": reason, "partition": out.partition, "offset": offset,
                                                    "raw": raw[:4096].decode("utf-8", "replace")})))
            for d in out.decisions:
                payload = d.to_json()
                payload["model"] = models.get(d.variant) if d.variant else None
                commands.append((d.track.encode(), orjson.dumps(payload)))
        # sinks first, then state and offsets (at-least-once commands, exactly-once state)
        await publisher["p"].publish(settings.topic_dead_letter, letters)
        await publisher["p"].publish(settings.topic_commands, commands)
        for rt, out in outputs:
            if rt.commit(out):
                if out.changes is not None:
                    metrics.record_batch(out, models, out.figures_before, out.figures_after)
                    now = time.time()
                    for ts in out.timestamps:
                        metrics.event_latency.observe(max(0.0, now - ts))
                metrics.batch_seconds.observe(time.perf_counter() - started)
        update_gauges(w)

    def update_gauges(w: Worker) -> None:
        p = w.policy
        metrics.threshold.labels("medium").set(p.threshold)
        metrics.threshold.labels("fast").set(p.fast_threshold)
        metrics.cost.set(sum(rt.warmer.tiers.cost_per_day for rt in w.runtimes.values()))
        for part, rt in w.runtimes.items():
            try:
                high = app.consumer.highwater(TP(settings.topic_sessions, part))
            except Exception:  # not fetched yet
                high = None
            if high is not None:
                metrics.lag.labels(str(part)).set(max(0, high - rt.next_offset))

    @app.timer(0.5)
    async def refresh_thresholds() -> None:
        if holder["worker"] is not None:
            holder["worker"].refresh_thresholds()
            update_gauges(holder["worker"])

    from .web import register_views

    register_views(app, settings, worker, metrics)
    return app


app = create_app(Settings.from_env())

if __name__ == "__main__":
    app.main()
