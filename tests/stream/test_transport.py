"""The batch delivery leans on faust-streaming's private consumer methods: these tests fail when
an upgrade changes them (their source is pinned by hash: read the new version, port what changed
into stream/worker/transport.py, then update the hashes), and check that a run is acknowledged
as every one of its offsets."""
import asyncio
import hashlib
import inspect
from types import SimpleNamespace

import faust
import pytest
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from stream.worker.transport import Run, Transport, interleaved

PINNED = {
    # what transport.Consumer replaces or relies on, and the sha256 of its source in 0.15.3
    (faust_consumer.Consumer, "_drain_messages"): "44a2500309e8",
    (faust_consumer.Consumer, "_wait_next_records"): "6218e1969a63",
    (faust_consumer.Consumer, "getmany"): "4b168d84882a",
    (faust_consumer.Consumer, "ack"): "5fcf41cf4515",
    (faust_consumer.Consumer, "_new_offset"): "1d2c7ea89a7a",
    (faust_consumer.Consumer, "wait_empty"): "e4662fe24f09",
    (faust_aiokafka.Consumer, "_to_message"): "7c24f6511b2f",
    (faust_aiokafka.AIOKafkaConsumerThread, "_fetch_records"): "39a2c6c79fc1",
}


def _digest(owner, name) -> str:
    return hashlib.sha256(inspect.getsource(getattr(owner, name)).encode()).hexdigest()[:12]


def test_faust_is_the_version_the_transport_was_written_for():
    assert faust.__version__.startswith("0.15."), faust.__version__


@pytest.mark.parametrize("owner,name", sorted(PINNED, key=lambda k: (k[0].__module__, k[1])),
                         ids=lambda v: getattr(v, "__name__", v))
def test_the_private_faust_methods_used_are_unchanged(owner, name):
    assert _digest(owner, name) == PINNED[(owner, name)], (
        f"faust's {owner.__qualname__}.{name} changed: check stream/worker/transport.py against it")


def _record(offset, value=b"x", ts=1_700_000_000_000):
    return SimpleNamespace(offset=offset, value=value, timestamp=ts, timestamp_type=0)


def _consumer():
    app = faust.App("transport-test", broker="kafka://127.0.0.1:1", web_enabled=False)
    app.transport = Transport(app.conf.broker_consumer, app, positioned_topics={"sessions"})
    app.topics._acking_topics.add("sessions")
    return app.consumer


def test_a_run_is_one_message_holding_every_record():
    tp = TP("sessions", 3)
    run = Run(tp, [_record(10, b"a"), _record(11, b"b"), _record(12, b"c", None)], generation_id=1)
    assert (run.offset, run.first_offset, run.partition) == (12, 10, 3)
    assert run.value == [(10, b"a", 1_700_000_000.0), (11, b"b", 1_700_000_000.0), (12, b"c", None)]


def test_acking_a_run_acks_each_of_its_offsets_so_faust_commits_past_it():
    consumer = _consumer()
    tp = TP("sessions", 0)
    first = Run(tp, [_record(o) for o in range(2, 5)], generation_id=1)
    second = Run(tp, [_record(o) for o in range(5, 9)], generation_id=1)
    consumer._committed_offset[tp] = 2  # faust committed up to offset 2
    assert consumer.ack(second)
    assert consumer._new_offset(tp) is None  # offsets 2..4 are not acknowledged yet: nothing to commit
    assert consumer.ack(first)
    assert consumer._new_offset(tp) == 9
    assert not consumer.ack(second)  # once


def test_a_run_overlapping_acked_offsets_is_not_counted_twice():
    consumer = _consumer()
    tp = TP("sessions", 1)
    assert consumer.ack(Run(tp, [_record(o) for o in range(0, 6)], generation_id=1))
    assert consumer.ack(Run(tp, [_record(o) for o in range(3, 10)], generation_id=1))  # re-sent after a seek
    assert sorted(consumer._acked[tp]) == list(range(10))
    assert consumer._new_offset(tp) == 10


def test_held_partitions_are_not_fetched():
    consumer = _consumer()
    a, b = TP("sessions", 0), TP("sessions", 1)
    asked = []

    async def getmany(active_partitions, timeout):
        asked.append(set(active_partitions))
        return {}

    consumer._getmany = getmany
    consumer._active_partitions = {a, b}
    consumer.hold([b])
    _, active = asyncio.run(consumer._wait_next_records(0.01))
    consumer.hold([])
    asyncio.run(consumer._wait_next_records(0.01))
    assert asked == [{a}, {a, b}]
    assert active == {a, b}  # faust's own active set is left as it was


def test_topics_take_turns():
    s0, s1, e0 = TP("s", 0), TP("s", 1), TP("e", 0)
    order = [tp for tp, _ in interleaved({s0: [1], s1: [2], e0: [3]})]
    assert order == [s0, e0, s1]
