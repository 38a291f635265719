"""Where a partition resumes, and what the worker says about its health: pure rules, no servers
(the faults themselves are reproduced in tests/integration/test_faults.py)."""
import pytest
from faust.types import TP

from models.parsing import TimeWindow, parse_event
from models.rejections import Rejected
from stream.worker.transport import ReadOffsets
from stream.worker.health import Health
from stream.worker.positions import StateLost, resume_offset


def test_the_offset_in_redis_decides_even_when_the_broker_is_ahead():
    r = resume_offset(0, stored=14_575, earliest=0, committed=18_075)
    assert (r.offset, r.reason, r.loud) == (14_575, "stored", False)


def test_a_new_partition_starts_where_the_topic_starts():
    assert resume_offset(1, stored=None, earliest=0).reason == "fresh"
    assert resume_offset(1, stored=None, earliest=500).offset == 500  # retention removed the start


def test_an_empty_redis_is_noticed_and_rebuilt_from_the_start():
    for witness in ({"committed": 3_336}, {"applied": 3_336}):
        r = resume_offset(2, stored=None, earliest=0, **witness)
        assert (r.offset, r.reason, r.loud) == (0, "rebuilt", True) and "came back empty" in r.detail


def test_an_empty_redis_whose_events_are_gone_stops_with_an_error():
    with pytest.raises(StateLost, match="cannot be rebuilt"):
        resume_offset(2, stored=None, earliest=1_000, committed=3_336)


def test_state_older_than_the_topic_stops_with_an_error():
    with pytest.raises(StateLost, match="topic now starts at 5000"):
        resume_offset(3, stored=4_000, earliest=5_000)


def test_an_older_redis_is_replayed_from_where_it_is():
    r = resume_offset(0, stored=900, earliest=0, applied=1_000)
    assert (r.offset, r.reason, r.loud) == (900, "rolled_back", True)


def test_health_is_unready_while_a_dependency_is_away_or_a_partition_stuck():
    h = Health(stall_seconds=30)
    h.redis.ok(), h.kafka.ok()
    h.observe({0: 100, 1: 200}, now=0.0)
    assert h.report({0: 0, 1: 0})[0] is True
    h.observe({0: 100, 1: 250}, now=40.0)  # partition 0 did not move in 40 s
    assert h.stalled({0: 5, 1: 7}, now=40.0) == {0: 40.0}
    assert h.stalled({0: 0, 1: 7}, now=40.0) == {}  # no lag: nothing to do is not stuck
    assert h.redis.failed(ConnectionError("refused")) is True
    ready, body = h.report({})
    assert not ready and body["live"] and body["dependencies"]["redis"]["error"] == "refused"


def test_implausible_times_are_rejected_with_the_reason():
    window = TimeWindow.from_date("2000-01-01", max_ahead=300)
    now = 1_700_000_000.0
    event = {"session_id": 1, "user_id": 1, "track_id": "a" * 22, "event_type": "play"}
    for stamp, reason in (("9999-12-31T23:59:59", "timestamp_in_future"), (0, "timestamp_before_era"),
                          ("0001-01-01T00:00:00", "timestamp_before_era"), (10**14 - 1, "timestamp_in_future")):
        with pytest.raises(Rejected) as err:
            window.check(parse_event({**event, "timestamp": stamp}), now)
        assert err.value.reason == reason
    assert window.check(parse_event({**event, "timestamp": int((now + 200) * 1000)}), now)  # small skew is fine
    with pytest.raises(Rejected, match="bad_user_id"):
        parse_event({**event, "timestamp": "2023-01-01T00:00:00", "user_id": "17"})


def test_faust_drops_no_record_of_a_positioned_topic():
    offsets = ReadOffsets(frozenset({"sessions"}))
    offsets[TP("sessions", 0)] = 18_075
    offsets[TP("changelog", 0)] = 7
    assert offsets[TP("sessions", 0)] is None and offsets[TP("changelog", 0)] == 7


def test_only_the_unbroken_run_from_the_next_offset_is_applied():
    from stream.worker.scheduler import contiguous_run

    usual = [(o, b"") for o in range(10, 15)]
    assert contiguous_run(usual, 10) is usual
    # records fetched before a seek back to 10, mixed with those fetched after it
    mixed = [(o, b"") for o in (40, 41, 10, 11, 42, 12, 13, 50)]
    assert [r[0] for r in contiguous_run(mixed, 10)] == [10, 11, 12, 13]
    assert contiguous_run([(o, b"") for o in (40, 41)], 10) == []
    assert contiguous_run([(o, b"") for o in (8, 9)], 10) == []  # duplicates only


def test_livez_names_a_stopped_partition_and_an_agent_that_keeps_crashing():
    h = Health()
    assert h.live
    h.agent_crashed("warm", TypeError("bad"), (3, 120))
    assert h.live  # once: faust restarts it, the partitions are re-read
    h.progressed("warm")
    h.agent_crashed("warm", TypeError("bad"), (3, 120))
    h.agent_crashed("warm", TypeError("bad"), (3, 120))
    body = h.liveness()
    assert body["live"] is False and body["agent_crashes"]["warm"]["crashes"] == 2
    assert "partition 3 offset 120: TypeError: bad" in body["agent_crashes"]["warm"]["error"]
    h.progressed("warm")
    assert h.live
    h.stopped["predict/1"] = "at offset 7: JSONDecodeError"
    ready, report = h.report({})
    assert not ready and report["live"] is False and report["stopped_partitions"] == {"predict/1": "at offset 7: JSONDecodeError"}


def test_late_entries_above_the_alert_make_health_degraded_not_unready():
    h = Health(late_alert=100)
    h.redis.ok(), h.kafka.ok()
    h.entries_late(60, now=0.0)
    h.entries_late(60, now=30.0)
    assert h.late_recently(now=31.0) == 120
    assert h.late_recently(now=75.0) == 60  # the first went out of the minute
    h.late_entries.clear()
    h.entries_late(60)
    ready, body = h.report({})
    assert ready and body["status"] == "ok" and body["late_entries_last_minute"] == 60
    h.entries_late(60)
    ready, body = h.report({})
    assert ready and body["status"] == "degraded" and body["late_entries_last_minute"] == 120
    h.unowned = {"warm/2": 40}
    ready, body = h.report({})
    assert not ready and body["unowned_partitions"] == {"warm/2": 40}


def test_a_dependency_away_from_the_start_is_said_once():
    h = Health()
    assert h.kafka.failed(ConnectionError("refused")) is True  # never answered: said
    assert h.kafka.failed(ConnectionError("refused")) is False  # still away: not again
    assert h.kafka.ok() is True and h.kafka.failed("gone") is True


def test_client_noise_is_counted_while_its_dependency_is_away_and_a_few_lines_pass_while_up():
    import logging

    from stream.worker.log_noise import ClientNoise

    h = Health()
    noise = ClientNoise(h.kafka, budget=2, window=60.0)
    record = logging.LogRecord("aiokafka.conn", logging.ERROR, __file__, 1, "Unable connect to node %s", (1,), None)
    h.kafka.ok()
    assert [noise.filter(record) for _ in range(3)] == [True, True, False]  # the budget, then counted
    h.kafka.failed("away")
    assert not any(noise.filter(record) for _ in range(100))
    info = logging.LogRecord("aiokafka.conn", logging.INFO, __file__, 1, "connected", (), None)
    assert noise.filter(info)  # below WARNING: left alone
    assert noise.take() == "101 client warnings and errors suppressed (most often 101x 'Unable connect to node %s')"
    assert noise.take() == ""


def test_failed_token_attempts_are_throttled_per_client():
    from stream.worker.web import AuthThrottle

    t = AuthThrottle(limit=3, window=60.0)
    for i in range(3):
        assert not t.blocked("10.0.0.1", now=float(i))
        t.failed("10.0.0.1", "PUT /threshold", now=float(i))
    assert t.blocked("10.0.0.1", now=3.0) and not t.blocked("10.0.0.2", now=3.0)
    assert not t.blocked("10.0.0.1", now=61.0)  # the minute is over


def test_every_rejection_reason_reaches_prometheus_with_its_status_name():
    """Orphan skips were counted in `skipcache status` and missing from the metric."""
    from stream.store import Changes
    from stream.worker.metrics import WorkerMetrics
    from stream.worker.stages.partition import BatchOutput

    m = WorkerMetrics()
    out = BatchOutput("predict", 0, 0, 10, dead_letters=[(3, "bad_json", b"{")])
    out.changes = Changes(counters={"rejected": {"bad_json": 1, "orphan_skip": 4}})
    m.record_batch(out, {})
    warm = BatchOutput("warm", 0, 0, 2, dead_letters=[(1, "unknown_source", b"{}")])
    warm.changes = Changes(counters={"rejected": {"entries_unknown_source": 1}})
    m.record_batch(warm, {})
    text = m.render().decode()
    for reason, n in (("bad_json", 1), ("orphan_skip", 4), ("entries_unknown_source", 1)):
        assert f'skipcache_rejected_events_total{{reason="{reason}"}} {n}.0' in text


def test_sinks_flushing_together_start_one_shared_producer(monkeypatch):
    """Both stages' sinks flushing at once (a restart with a backlog) each started a producer and
    leaked all but one ("Unclosed AIOKafkaProducer")."""
    import asyncio

    import stream.sinks.kafka_topic as kafka_topic

    started = []

    class SlowToStart:
        def __init__(self, **config):
            self.config = config

        async def start(self):
            await asyncio.sleep(0.01)  # connecting to the broker
            started.append(self)

        async def stop(self):
            pass

    monkeypatch.setattr(kafka_topic, "AIOKafkaProducer", SlowToStart)
    shared = kafka_topic.SharedProducer("127.0.0.1:9")

    async def flush_together():
        return await asyncio.gather(*(shared.get() for _ in range(4)))

    got = asyncio.run(flush_together())
    assert len(started) == 1 and all(p is started[0] for p in got)


def test_a_flush_sends_one_batch_per_partition_to_the_default_partitioners_choice(monkeypatch):
    """aiokafka's 16 KiB default batch split a checkpoint's entries into hundreds of batches; keys
    keep Kafka's murmur2 partition whether their partition is remembered or not."""
    import asyncio

    from aiokafka import AIOKafkaProducer
    from kafka.partitioner.default import murmur2

    import stream.sinks.kafka_topic as kafka_topic

    sent = []

    class Keys:  # aiokafka's real batch (its real size limit), remembering the keys appended
        def __init__(self, batch):
            self.batch, self.keys = batch, []

        def append(self, *, key, value, timestamp):
            meta = self.batch.append(key=key, value=value, timestamp=timestamp)
            if meta is not None:  # None: full, the record goes to the next batch
                self.keys.append(key)
            return meta

        def record_count(self):
            return self.batch.record_count()

    class Recording(AIOKafkaProducer):  # no broker
        async def start(self):
            pass

        async def partitions_for(self, topic):
            return {0, 1, 2}

        def create_batch(self):
            return Keys(super().create_batch())

        async def send_batch(self, batch, topic, *, partition):
            sent.append((partition, batch.keys))
            done = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done

    monkeypatch.setattr(kafka_topic, "AIOKafkaProducer", Recording)
    monkeypatch.setattr(kafka_topic, "KEY_CACHE", 50)  # remembered, forgotten, remembered again
    keys = [f"track-{i % 120}".encode() for i in range(20_000)]
    asyncio.run(kafka_topic.SharedProducer("127.0.0.1:9").publish("entries", [(k, b"x" * 40, None) for k in keys]))
    assert sorted(p for p, _ in sent) == [0, 1, 2]  # ~1 MB in all: one batch per partition
    for p, got in sent:
        assert got == [k for k in keys if (murmur2(k) & 0x7FFFFFFF) % 3 == p]  # all of them, in order


def test_misrouted_events_make_health_degraded_for_a_minute_not_unready():
    h = Health()
    h.redis.ok(), h.kafka.ok()
    ready, body = h.report({})
    assert body["status"] == "ok" and body["misrouted_events_last_minute"] == 0
    h.events_misrouted(3)
    ready, body = h.report({})
    assert ready and body["status"] == "degraded" and body["misrouted_events_last_minute"] == 3
    assert h.misrouted_recently(now=__import__("time").monotonic() + 61) == 0
