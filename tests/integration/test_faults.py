"""Faults the worker must ride out, against real Tansu and Redis: a broker offset ahead of Redis,
Redis killed and restarted (with its AOF, and empty), the broker killed and restarted. Each ends
with the figures of an uninterrupted run, and /healthz says 503 while the dependency is away."""
from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient

from stream.cli.jobs import live_figures
from stream.producer import replay
from stream.cli.services import start_redis, start_tansu, stop_process

from tests.integration.conftest import COMPARED, expected_figures, make_live

pytestmark = pytest.mark.integration


def _health(port: int) -> tuple[int | None, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _assert_uninterrupted(live, live_data) -> None:
    fig = live_figures(live.settings)
    expected = expected_figures(live_data, live.settings)
    for key in COMPARED:
        assert fig[key] == expected[key], key
    assert fig["predictions"] > 5000


def _wait_until(predicate, timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s: {what}")


def _kill(*services) -> None:
    for service in services:
        os.kill(service.proc.pid, signal.SIGKILL)
        service.proc.wait()


def _stop(worker) -> None:
    if worker.poll() is None:
        stop_process(worker, 30)


@pytest.fixture
def own_servers(tmp_path):
    """A broker and an AOF-persisted Redis of the test's own, so it can kill them."""
    kafka = start_tansu(workdir=tmp_path / "tansu")
    redis = start_redis(workdir=tmp_path / "redis", appendonly=True)
    yield kafka, redis
    kafka.stop()
    redis.stop()


@pytest.fixture
def own_live(own_servers, live_data, tmp_path):
    kafka, redis = own_servers
    return make_live(kafka.port, redis.port, live_data, tmp_path, SKIPCACHE_BATCH_SIZE="200")


def _replay_with_a_copy_at(live, store, worker, events, cut: int) -> dict:
    """Replay ``events`` through ``worker``, returning a copy of Redis's keys (DUMPs) taken once
    both stages had applied the first ``cut``."""
    replay(events[:cut], live.settings.kafka_bootstrap, live.settings.topic_sessions, progress=False)
    live.wait_applied(cut, workers=[worker])
    snapshot = {key: store.r.dump(key) for key in store.r.scan_iter(f"*{live.settings.redis_prefix}:*")}
    replay(events[cut:], live.settings.kafka_bootstrap, live.settings.topic_sessions, progress=False)
    live.wait_applied(len(events), workers=[worker])
    return snapshot


def test_a_broker_offset_ahead_of_redis_resumes_from_redis(live, live_data):
    """The stall of issue 9.1: faust's recovery used to seek to the broker's committed offset and
    drop every record below it, while the worker waited for Redis's offset forever. Here Redis
    goes back to a copy taken at 40% while the group's offsets in the broker say 100%."""
    _, _, events, _ = live_data
    cut = len(events) * 2 // 5
    store = live.store()
    worker, _ = live.start_worker("first")
    try:
        snapshot = _replay_with_a_copy_at(live, store, worker, events, cut)
    finally:
        _stop(worker)  # a clean stop: faust commits the group's offsets to the broker
    admin = KafkaAdminClient(bootstrap_servers=live.settings.kafka_bootstrap)
    committed = {tp.partition: meta.offset for tp, meta in admin.list_group_offsets(
        live.settings.app_id)[live.settings.app_id].items() if tp.topic == live.settings.topic_sessions}
    admin.close()
    store.r.delete(*store.r.scan_iter(f"*{live.settings.redis_prefix}:*"))
    for key, value in snapshot.items():
        store.r.restore(key, 0, value)
    behind = {p: store.offset(p) for p in range(live.settings.partitions)}
    assert any(committed.get(p, 0) > behind[p] for p in behind), (committed, behind)  # the broker is ahead
    worker, _ = live.start_worker("second")
    try:
        live.wait_applied(len(events), workers=[worker], timeout=90)
        _assert_uninterrupted(live, live_data)
    finally:
        _stop(worker)


def test_an_idle_worker_notices_redis_going_back_and_replays(live, live_data):
    """Redis goes back to an older copy while the worker has nothing left to apply (a failover
    that lost the last acknowledged commits, after the last batch): no batch reads, so without a
    check the worker would believe it is done. It compares the stored offsets with what its
    partitions applied, replays from the older ones and ends with an uninterrupted run's figures."""
    _, _, events, _ = live_data
    cut = len(events) * 2 // 5
    store = live.store()
    worker, _ = live.start_worker("idle")
    try:
        snapshot = _replay_with_a_copy_at(live, store, worker, events, cut)
        with store.r.pipeline(transaction=True) as pipe:  # at once, as a failover does
            pipe.delete(*store.r.scan_iter(f"*{live.settings.redis_prefix}:*"))
            for key, value in snapshot.items():
                pipe.restore(key, 0, value)
            pipe.execute()
        assert live.applied() < len(events)
        live.wait_applied(len(events), workers=[worker], timeout=60)
        _assert_uninterrupted(live, live_data)
        assert "the store holds offsets" in (live.workdir / "idle.log").read_text()
    finally:
        _stop(worker)


def _kill_redis_mid_replay(live, own_servers, live_data):
    """A worker a third of the way through a replay when its Redis is killed -9."""
    redis = own_servers[1]
    events = live_data[2]
    worker, port = live.start_worker()
    replay(events, live.settings.kafka_bootstrap, live.settings.topic_sessions, progress=False)
    _wait_until(lambda: live.applied() > len(events) // 3, what="a third applied")
    _kill(redis)
    return live, worker, port, len(events)


def _restart_redis(own_servers, **kwargs) -> None:
    redis = own_servers[1]
    redis.proc = start_redis(port=redis.port, **kwargs).proc  # stopped by the fixture


def test_redis_killed_then_restarted_with_its_aof(own_live, own_servers, live_data):
    live, worker, port, total = _kill_redis_mid_replay(own_live, own_servers, live_data)
    try:
        _wait_until(lambda: _health(port)[0] == 503, what="/healthz to say 503")
        status, body = _health(port)
        assert body["dependencies"]["redis"]["up"] is False and body["live"] is True
        time.sleep(3)  # a few backoff rounds with Redis away
        assert worker.poll() is None, "the worker died with Redis"
        _restart_redis(own_servers, workdir=own_servers[1].workdir, appendonly=True)
        live.wait_applied(total, workers=[worker], timeout=90)
        _wait_until(lambda: _health(port)[0] == 200, what="/healthz back to 200")
        _assert_uninterrupted(live, live_data)
    finally:
        _stop(worker)


def test_redis_back_empty_is_noticed_and_rebuilt_from_the_topic(own_live, own_servers, live_data, tmp_path):
    live, worker, port, total = _kill_redis_mid_replay(own_live, own_servers, live_data)
    try:
        # what a restart without persistence comes back with: nothing
        _restart_redis(own_servers, workdir=own_servers[1].workdir / "empty")
        live.wait_applied(total, workers=[worker], timeout=90)
        status, body = _health(port)
        assert body["state_losses"] >= 1  # said loudly: /healthz, the metric, the log
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            assert "skipcache_state_losses_total 0.0" not in resp.read().decode()
        assert "Redis came back empty" in (tmp_path / "w.log").read_text()
        _assert_uninterrupted(live, live_data)
    finally:
        _stop(worker)


def _read_topic(bootstrap: str, topic: str, partitions: int) -> dict[int, list[bytes]]:
    """Every record's value, by partition, in offset order."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, consumer_timeout_ms=3000, enable_auto_commit=False)
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    consumer.seek_to_beginning()
    out: dict[int, list[bytes]] = {p: [] for p in range(partitions)}
    for m in consumer:
        assert m.offset == len(out[m.partition])
        out[m.partition].append(m.value)
    consumer.close()
    return out


def _write_topic(bootstrap: str, topic: str, records: dict[int, list[bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for p, values in records.items():
        for value in values:
            producer.send(topic, value=value, partition=p)
    producer.flush()
    producer.close()


def test_broker_killed_and_restarted(own_live, own_servers, live_data):
    live, kafka = own_live, own_servers[0]
    _, _, events, _ = live_data
    half = len(events) // 2
    worker, port = live.start_worker()
    try:
        live.send(events[:half])
        live.wait_applied(half, workers=[worker])
        entries = _read_topic(live.settings.kafka_bootstrap, live.settings.topic_entries, live.settings.warm_partitions)
        _kill(kafka)
        killed = time.monotonic()
        _wait_until(lambda: _health(port)[0] == 503, what="/healthz to say 503")
        assert _health(port)[1]["dependencies"]["kafka"]["up"] is False
        time.sleep(max(0.0, 10.0 - (time.monotonic() - killed)))  # a 10 s outage
        assert worker.poll() is None, "the worker died with the broker"
        # Tansu keeps topics in memory: the restarted broker gets them again, with the same events
        # (and the internal entries topic with the same records), as a durable Kafka would keep them
        restarted = start_tansu(port=kafka.port, workdir=kafka.workdir)
        own_servers[0].proc = restarted.proc
        live.create_topics()
        _write_topic(live.settings.kafka_bootstrap, live.settings.topic_entries, entries)
        replay(events, live.settings.kafka_bootstrap, live.settings.topic_sessions, progress=False)
        live.wait_applied(len(events), workers=[worker], timeout=120)
        _wait_until(lambda: _health(port)[0] == 200, what="/healthz back to 200")
        _assert_uninterrupted(live, live_data)
    finally:
        _stop(worker)
    log = (live.workdir / "w.log").read_text()
    errors = [line for line in log.splitlines() if " ERROR " in line or "[ERROR]" in line]
    # the outage said once when it began and once when it ended, the client's noise counted, not printed
    assert len(errors) <= 5, "\n".join(errors[:20])
    assert "Kafka is unreachable" in log and "Kafka answers" in log


def test_shutdown_with_both_dependencies_gone_exits_and_frees_the_port(own_live, own_servers):
    import socket

    own_live.env["SKIPCACHE_SHUTDOWN_GRACE_SECONDS"] = "5"
    worker, port = own_live.start_worker()
    _kill(*own_servers)
    _wait_until(lambda: _health(port)[0] == 503, what="/healthz to say 503")
    started = time.monotonic()
    worker.terminate()
    worker.wait(20)  # the shutdown watchdog exits after 5 s at the latest
    assert time.monotonic() - started < 20
    with socket.socket() as s:  # as a replacement's web server binds: fails while anything listens there
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
