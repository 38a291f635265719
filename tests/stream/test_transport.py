"""The batch delivery leans on faust-streaming's private consumer methods: these tests fail when
an upgrade changes them (their source is pinned by hash: read the new version, port what changed
into stream/worker/transport.py, then update the hashes), and check that a run is acknowledged
as every one of its offsets."""
import asyncio
import collections
import contextlib
import hashlib
import inspect
from types import SimpleNamespace

import aiokafka
import faust
import pytest
from aiokafka.consumer import fetcher as aiokafka_fetcher
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from stream.worker.transport import BatchRecords, Run, RunResults, Transport, interleaved

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
    # aiokafka 0.14.0's, which BatchRecords and RunResults rely on: a fetched result is set in
    # Fetcher._records by item, its PartitionRecords iterates what _unpack_records yields
    (aiokafka_fetcher.PartitionRecords, "__init__"): "8ec1c2ae6ea1",
    (aiokafka_fetcher.PartitionRecords, "_unpack_records"): "b803e6d46480",
    (aiokafka_fetcher.PartitionRecords, "__iter__"): "b411eeeaeb7c",  # BatchRecords iterates as its generator
    (aiokafka_fetcher.PartitionRecords, "__next__"): "63ac34a08c30",
    (aiokafka_fetcher.FetchResult, "getall"): "3e717e30de50",
    (aiokafka_fetcher.Fetcher, "__init__"): "bf21ecb7e0f2",  # its results: an OrderedDict
    (aiokafka_fetcher.Fetcher, "fetched_records"): "be4348896b9b",
    (aiokafka_fetcher.Fetcher, "_proc_fetch_request"): "59bf948fff47",
}


def _digest(owner, name) -> str:
    return hashlib.sha256(inspect.getsource(getattr(owner, name)).encode()).hexdigest()[:12]


def test_faust_is_the_version_the_transport_was_written_for():
    assert faust.__version__.startswith("0.15."), faust.__version__
    assert aiokafka.__version__.startswith("0.14."), aiokafka.__version__


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


def _batches(*spans: tuple[int, int]) -> bytes:
    """Kafka record batches (v2, as the broker sends them) holding offsets ``start`` .. ``end - 1`` each."""
    data = b""
    for start, end in spans:
        builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 20)
        for offset in range(start, end):
            builder.append(offset - start, timestamp=1_700_000_000_000 + offset, key=None,
                           value=b"v%d" % offset, headers=[])
        batch = bytearray(builder.build())
        batch[0:8] = start.to_bytes(8, "big")  # the batch's base offset
        data += bytes(batch)
    return data


def _fetched(topic: str, data: bytes, fetch_offset: int, results: RunResults) -> tuple[list, object]:
    """What aiokafka's fetcher hands out of a result set in ``results``, as its fetch does."""
    tp = TP(topic, 0)
    partition_records = aiokafka_fetcher.PartitionRecords(tp, MemoryRecords(data), [], fetch_offset, None, None, True,
                                                          aiokafka_fetcher.READ_UNCOMMITTED)
    results[tp] = SimpleNamespace(_partition_records=partition_records)
    got = list(results[tp]._partition_records)
    return got, partition_records


def test_a_positioned_topics_records_come_from_the_batch_reader_from_the_fetch_offset_on():
    results = RunResults(collections.OrderedDict(), frozenset({"sessions"}))
    got, partition_records = _fetched("sessions", _batches((0, 5), (5, 9)), 3, results)
    assert type(partition_records) is BatchRecords
    assert [r[0] for r in got] == [3, 4, 5, 6, 7, 8]  # a batch fetched from inside it: the first go
    assert got[0] == (3, b"v3", 1_700_000_000.003)  # a run's own items, no ConsumerRecord
    assert partition_records.next_fetch_offset == 9  # where aiokafka fetches next
    run = Run(TP("sessions", 0), got, generation_id=1)
    assert run.value is got and (run.first_offset, run.offset, run.timestamp) == (3, 8, 1_700_000_000.008)


def test_a_result_read_in_parts_goes_on_where_it_stopped():
    """aiokafka's ``getall(max_records)`` stops inside a result and later reads on: the batch
    reader's generator, iterated directly, must then give each record once, in order, with the
    fetch position after the last one handed out."""
    results = RunResults(collections.OrderedDict(), frozenset({"sessions"}))
    tp = TP("sessions", 0)
    partition_records = aiokafka_fetcher.PartitionRecords(tp, MemoryRecords(_batches((0, 4), (4, 9))), [], 2, None,
                                                          None, True, aiokafka_fetcher.READ_UNCOMMITTED)
    consumed = []  # the positions aiokafka's subscription state is moved to
    state = SimpleNamespace(consumed_to=consumed.append)
    results[tp] = result = aiokafka_fetcher.FetchResult(
        tp, assignment=SimpleNamespace(state_value=lambda tp: state), partition_records=partition_records, backoff=0)
    result.check_assignment = lambda tp: True
    seen = []
    while result.has_more():
        seen += [r[0] for r in result.getall(max_records=3)]
        assert consumed[-1] == seen[-1] + 1  # the position after the last record handed out
    assert seen == list(range(2, 9)) and consumed == [5, 8, 9]


def test_results_fetched_before_the_worker_reads_through_run_results_stay_aiokafkas():
    tp = TP("sessions", 0)
    half_read = aiokafka_fetcher.PartitionRecords(tp, MemoryRecords(_batches((0, 5))), [], 0, None, None, True,
                                                  aiokafka_fetcher.READ_UNCOMMITTED)
    first = next(half_read)
    results = RunResults(collections.OrderedDict({tp: SimpleNamespace(_partition_records=half_read)}),
                         frozenset({"sessions"}))
    assert type(results[tp]._partition_records) is aiokafka_fetcher.PartitionRecords
    assert [first.offset] + [r.offset for r in half_read] == [0, 1, 2, 3, 4]  # none lost


def test_other_topics_records_stay_aiokafkas():
    results = RunResults(collections.OrderedDict(), frozenset({"sessions"}))
    got, partition_records = _fetched("faust-internal", _batches((0, 3)), 0, results)
    assert type(partition_records) is aiokafka_fetcher.PartitionRecords
    assert [type(r) for r in got] == [aiokafka.structs.ConsumerRecord] * 3


def test_a_damaged_batch_is_refused_as_aiokafka_refuses_it():
    data = bytearray(_batches((0, 3)))
    data[-1] ^= 0xFF  # a byte of the last record's value
    results = RunResults(collections.OrderedDict(), frozenset({"sessions"}))
    with pytest.raises(CorruptRecordException):
        _fetched("sessions", bytes(data), 0, results)


def test_the_workers_consumer_reads_through_run_results():
    thread = _consumer()._new_consumer_thread()
    async def fetched_records(partitions, timeout=0, max_records=None):
        return {}

    fetcher = SimpleNamespace(_records=collections.OrderedDict(), _closed=False, fetched_records=fetched_records,
                              _subscriptions=SimpleNamespace(fetch_context=contextlib.nullcontext))
    aiokafka_consumer = SimpleNamespace(_fetcher=fetcher, _closed=False)
    asyncio.run(thread._fetch_records(aiokafka_consumer, set(), timeout=0))
    assert type(fetcher._records) is RunResults and fetcher._records.topics == {"sessions"}
