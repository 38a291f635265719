"""The live worker, a Faust app built by ``create_app(settings)``: `skipcache worker`, or
`faust -A stream.faust_main worker`. Importing this module builds and connects nothing.

Two stages, each an agent (``SKIPCACHE_STAGE`` picks one or both; both by default):
- **predict** consumes pozytywka.sessions (keyed by user): parse, features, scores, accuracy; it
  publishes one message of entries per warm partition to the entries topic. It also reads the
  repartition topic, co-partitioned with the sessions topic: events a producer keyed otherwise
  than by user, forwarded by the partition that received them to the one their user lives in;
- **warm** consumes the entries topic (keyed by track): the one placement of its tracks, the
  policy, eviction and cache figures; it publishes pozytywka.cache-commands.

This module is only the wiring: faust's app, the transport that hands each agent whole fetched
runs of a partition's records (``transport.py``), the agents, timers and signals, each a call
into ``WorkerService`` (``service.py``), which holds the loop and the recovery."""
from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import faust

from stream.bootstrap import Worker, build_worker
from stream.settings import Settings
from stream.worker.log_noise import install
from stream.worker.service import WorkerService
from stream.worker.transport import Transport

log = logging.getLogger("skipcache.worker")
RUN_BUFFER = 4
"""Runs (not records) an agent's buffer holds before faust pauses the partition. Few: each run is
up to a fetch (~4,000 events), decoded as the agent takes it, and a partition's run queued behind
many of another's reached the scheduler after its 1 s wait for a partition that sends nothing
(``scheduler.EPOCH_WAIT_SECONDS``); the scheduler holds what a batch needs besides."""


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
        stream_buffer_maxsize=RUN_BUFFER,
        producer_linger_ms=5,
        table_cleanup_interval=3600,
    )
    service = WorkerService(app, settings, build)
    install(service.noise["kafka"], ("aiokafka", "kafka"))
    install(service.noise["redis"], ("redis",))
    built = settings.stages  # checks SKIPCACHE_STAGE before anything starts
    topics = {"predict": ((settings.topic_sessions, settings.topic_repartition), settings.partitions),
              "warm": ((settings.topic_entries,), settings.warm_partitions)}
    app.transport = Transport(app.conf.broker_consumer, app, fetch_max_wait_ms=settings.fetch_max_wait_ms,
                              positions=service.positions, on_wait_empty=service.release_all,
                              positioned_topics={topic for n in built for topic in topics[n][0]})

    @app.on_partitions_revoked.connect
    async def on_revoked(sender, revoked, **kwargs) -> None:
        service.on_revoked(revoked)

    def agent(name: str) -> None:
        names, partitions = topics[name]
        channel = app.topic(*names, key_type=bytes, value_type=bytes, key_serializer="raw",
                            value_serializer="raw", partitions=partitions)

        async def consume(stream):
            await service.consume(name, stream)

        consume.__name__ = f"{name}_stage"  # the agent's name in faust (and its logs)
        app.agent(channel, name=f"skipcache.{name}")(consume)

    for name in built:
        agent(name)

    app.timer(min(0.05, settings.batch_within / 2))(service.cut_overdue_batches)
    app.timer(0.1)(service.release_idle_entries)  # returns at once unless entries wait on a quiet source
    app.timer(0.2)(service.tell_read_all)
    app.timer(0.5)(service.refresh_thresholds)
    app.timer(1.0)(service.check_group)
    app.timer(1.0)(service.check_stored_offsets)  # an idle stage reads no offset otherwise
    relevant = {n: (topics[n][0][0], topics[n][1]) for n in built}

    @app.timer(1.0)
    async def check_kafka() -> None:
        await service.check_kafka(relevant)

    @app.on_before_shutdown.connect
    async def close_sinks(sender, **kwargs) -> None:
        await service.close_sinks()

    @app.task
    async def start() -> None:
        exit_if_shutdown_hangs(app, settings.shutdown_grace_seconds)
        await service.worker()

    from stream.worker.web import register_views

    register_views(app, settings, lambda: service.built, service.metrics, service.readiness, service.call,
                   service.health.liveness)
    return app
