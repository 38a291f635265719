"""Faust's aiokafka transport, changed where the worker needs it; handed to one app through its
public ``app.transport`` setter, so nothing is patched process-wide. Relies on private methods of
faust-streaming 0.15 (pinned in pyproject.toml; ``tests/stream/test_transport.py`` fails if an
upgrade changes them).

1. **Whole fetched runs, not one Event per record.** Faust's drain loop spends ~170 µs per record
   before an agent sees it (a ``wait_first`` of four tasks, the conductor's lock and flow checks,
   an Event, a loop turn and an ack per record). For the *positioned* topics (the two the worker
   reads: sessions and entries) each fetched (partition, records) run is one ``Run`` message:
   its value is the list of ``(offset, value, Kafka timestamp in s)``, its offset the last
   record's. It goes through faust's own callback (conductor, flow control, a full agent buffer
   pausing the partition -- faust-streaming #88 lost records where that check was missing),
   and its ack registers every offset of the run in faust's ack bookkeeping, so faust's
   commit of the group's offsets (a witness: Redis holds the truth) stays right. Every check of
   faust's own drain loop is kept: flow active (else faust's seek), the generation, assigned
   and active partitions. Other topics go record by record, as faust does.
2. **Where a partition resumes is the state store's word.** faust keeps a *read offset* per
   partition and drops every record below it. After every rebalance its recovery seeks to the
   broker's committed offsets (``seek_to_committed``); here that asks the worker where each
   partition resumes and seeks there, and faust drops no record of the positioned topics: the
   worker skips what it already applied itself, by offset.
3. **Partitions the worker holds back are not fetched** (``hold``: a partition far ahead of the
   others in event time, see ``scheduler.py``), and before faust waits for in-flight messages at
   a rebalance, the worker releases the runs it holds (``on_wait_empty``): they are re-read
   from the stored offsets once the rebalance is done.
4. **Fetches wait at most ``fetch_max_wait_ms``** (faust hard-codes 1,500 ms).
5. **The positioned topics' records come straight from aiokafka's record batch reader**
   (``RunResults``, in this consumer's fetcher only): aiokafka builds a ``ConsumerRecord`` per
   record (1.2-1.7 µs, a tenth of faust's consumer thread), where a run needs only each record's
   offset, value and times, which its C batch reader's records carry. Relies on private parts of
   aiokafka 0.14 (pinned likewise)."""
from __future__ import annotations

import asyncio
from collections import OrderedDict, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from aiokafka.consumer.fetcher import READ_UNCOMMITTED, PartitionRecords
from aiokafka.errors import CorruptRecordException
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as driver
from faust.types import TP, ConsumerMessage
from faust.types.tuples import ack_lock

Positions = Callable[[Mapping[TP, int | None], Mapping[TP, int]], Awaitable[Mapping[TP, int]]]
"""(broker-committed offsets, earliest offsets the topic holds) of the assigned partitions of the
positioned topics -> the offset each resumes at."""


class Run(ConsumerMessage):
    """One fetched run of one partition's records, delivered as one message: its value is the list
    of ``(offset, value, Kafka timestamp in s)``, as ``BatchRecords`` yields them (or made so from
    aiokafka's own records, where it read them itself)."""

    __slots__ = ("first_offset",)

    def __init__(self, tp: TP, records: list, generation_id: int | None):
        if type(records[0]) is not tuple:
            records = [(r.offset, r.value, r.timestamp / 1000.0 if r.timestamp is not None else None) for r in records]
        last = records[-1]
        super().__init__(tp.topic, tp.partition, last[0], last[2], 0, None, None, records, None, 0, len(records), tp,
                         generation_id=generation_id)  # (the timestamp type: nothing reads it)
        self.first_offset = records[0][0]


def interleaved(records: Mapping[TP, list]) -> list[tuple[TP, list]]:
    """(partition, its fetched records), the topics taking turns (as faust's scheduler does for
    single records), so one topic's partitions do not starve another's."""
    by_topic: dict[str, list] = defaultdict(list)
    for tp, batch in records.items():
        by_topic[tp.topic].append((tp, batch))
    if len(by_topic) == 1:
        return next(iter(by_topic.values()))
    rounds = max(len(v) for v in by_topic.values())
    return [runs[i] for i in range(rounds) for runs in by_topic.values() if i < len(runs)]


class BatchRecords(PartitionRecords):
    """aiokafka's iterator over one fetched partition's records, yielding each record's
    ``(offset, value, timestamp in s)``, a ``Run``'s own items, from the record batch reader's
    records rather than a ``ConsumerRecord`` built per record. Control batches are skipped, CRCs
    checked and the fetch position kept as aiokafka does; only for reads without transactions'
    markers and without deserializers (``RunResults`` checks). Iterated, it is its generator
    itself: aiokafka's ``FetchResult.getall`` then resumes it directly, not through a
    ``__next__`` in Python per record."""

    def __iter__(self):
        return self._records_iterator

    def _unpack_records(self):
        tp, records, check_crcs = self._tp, self._records, self._check_crcs
        while records.has_next():
            batch = records.next_batch()
            if check_crcs and not batch.validate_crc():
                raise CorruptRecordException(f"Invalid CRC - {tp}")
            if not batch.is_control_batch:
                start = self.next_fetch_offset
                for record in batch:
                    offset = record.offset
                    if offset >= start:  # a batch fetched from inside it: the records before go
                        self.next_fetch_offset = offset + 1
                        ts = record.timestamp
                        yield offset, record.value, ts / 1000.0 if ts is not None else None
            self.next_fetch_offset = batch.next_offset


class RunResults(OrderedDict):
    """aiokafka's fetcher's results by partition (``Fetcher._records``), in which a new result of
    a positioned topic iterates its records as ``BatchRecords``. Set in this worker's consumer
    only (``ConsumerThread._fetch_records``): nothing process-wide changes."""

    def __init__(self, results: OrderedDict, topics: frozenset[str]):
        super().__init__()
        self.topics = topics
        for tp, result in results.items():  # as they are: one may be half read
            super().__setitem__(tp, result)

    def __setitem__(self, tp: Any, result: Any) -> None:
        records = getattr(result, "_partition_records", None)
        if (type(records) is PartitionRecords and tp.topic in self.topics
                and records._isolation_level == READ_UNCOMMITTED
                and records._key_deserializer is None and records._value_deserializer is None):
            records.__class__ = BatchRecords  # new, not read yet: its iterator is made again
            records._records_iterator = records._unpack_records()
        super().__setitem__(tp, result)


class ConsumerThread(driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: "Transport") -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = transport.fetch_max_wait_ms  # aiokafka reads it when it starts
        return consumer

    async def _fetch_records(self, consumer: Any, active_partitions: Any, timeout: float | None = None,
                             max_records: int | None = None) -> Any:
        """faust's, in an aiokafka fetcher whose positioned topics' results are ``RunResults``."""
        fetcher = consumer._fetcher
        if fetcher is not None and not isinstance(fetcher._records, RunResults):
            fetcher._records = RunResults(fetcher._records, self.consumer.transport.positioned_topics)
        return await super()._fetch_records(consumer, active_partitions, timeout=timeout, max_records=max_records)


class ReadOffsets(defaultdict):
    """faust's read offsets, which read as unknown (None: drop nothing) for positioned topics."""

    def __init__(self, topics: frozenset[str]):
        super().__init__(lambda: None)
        self.topics = topics

    def __getitem__(self, tp: TP) -> int | None:
        return None if tp.topic in self.topics else super().__getitem__(tp)


class Consumer(driver.Consumer):
    def __init__(self, transport: "Transport", *args: Any, **kwargs: Any) -> None:
        super().__init__(transport, *args, **kwargs)
        self._read_offset = ReadOffsets(transport.positioned_topics)
        self.held: set[TP] = set()
        """Partitions the worker does not want fetched now (far ahead in event time)."""

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def hold(self, tps: Iterable[TP]) -> None:
        """Fetch only partitions outside ``tps`` from now on (records already fetched still come)."""
        self.held = set(tps)

    async def seek_to_committed(self) -> Mapping[TP, int]:
        committed = dict(await super().seek_to_committed())
        transport: Transport = self.transport  # type: ignore[assignment]
        mine = {tp for tp in self.assignment() if tp.topic in transport.positioned_topics}
        if not mine or transport.positions is None:
            return committed
        earliest = await self.earliest_offsets(*mine)
        positions = await transport.positions({tp: committed.get(tp) for tp in mine}, earliest)
        await self.seek_wait(positions)  # in the consumer's own thread, like faust's seeks
        return {**committed, **positions}

    async def wait_empty(self) -> None:
        """At a rebalance faust waits for every message delivered and not acked; runs the worker
        holds back would keep it waiting, so they are released (acked unapplied) first."""
        transport: Transport = self.transport  # type: ignore[assignment]
        if transport.on_wait_empty is not None:
            transport.on_wait_empty()
        await super().wait_empty()

    def ack(self, message: Any) -> bool:
        """A run is acknowledged as every one of its offsets (faust commits the first gap-free
        prefix of acknowledged offsets)."""
        done = super().ack(message)
        if done and isinstance(message, Run) and message.first_offset < message.offset:
            with ack_lock:
                tp = message.tp
                committed = self._committed_offset[tp]
                index = self._acked_index[tp]
                start = message.first_offset if committed is None else max(message.first_offset, committed)
                rest = [o for o in range(start, message.offset) if o not in index]
                index.update(rest)
                self._acked[tp].extend(rest)
                self._n_acked += len(rest)
        return done

    async def _wait_next_records(self, timeout: float):
        """faust's, but without the partitions the worker holds back."""
        if not self.flow_active:
            await self.wait(self.can_resume_flow)
        try:
            self.not_waiting_next_records.set()
            if self.app.client_only:
                return await self._getmany(active_partitions=None, timeout=timeout), None
            active = self._get_active_partitions()
            fetch = active - self.held if self.held else active
            if fetch:
                return await self._getmany(active_partitions=fetch, timeout=timeout), active
            await self.sleep(min(timeout, 0.05) if active else 1.0)
            return {}, active
        finally:
            self.not_waiting_next_records.set()

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover (runs in the worker)
        """faust's drain loop (``faust/transport/consumer.py``), delivering positioned topics as
        runs. Kept from it: flow control, the generation check, assigned and active partitions,
        read offsets and gaps, commit_every, and ``wait_first`` on the suspend flag."""
        callback = self.callback
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        set_flag, unset_flag = self.diag.set_flag, self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        positioned = self.transport.positioned_topics
        monitor = self.app.monitor
        to_message = self._to_message
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                records, active = await self._wait_next_records(1.0)
                await self.sleep(0)
                generation_id = self.app.consumer_generation_id
                if not records or self.should_stop:
                    unset_flag(CONSUMER_FETCHING)
                    continue
                if not self.flow_active:
                    try:
                        await self.perform_seek()
                    except Exception as exc:
                        self.log.warning("exception performing seek when flow not active %r", exc)
                    continue
                for tp, batch in interleaved(records):
                    if not self.flow_active or self.app.consumer_generation_id != generation_id:
                        break
                    if not batch or not (active is None or tp in active or tp in self._buffered_partitions):
                        continue
                    monitor.track_tp_end_offset(tp, self.highwater(tp))
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                    if tp.topic in positioned:
                        run = Run(tp, batch, generation_id)
                        await self.wait_first(callback(run), self.suspend_flow.wait())
                        continue
                    for record in batch:  # faust's own path, record by record
                        message = to_message(tp, record)
                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            gap = offset - (r_offset or 0)
                            if gap > 1 and r_offset and acks_enabled_for(message.topic):
                                await self._add_gap(tp, r_offset + 1, offset)
                            await self.wait_first(callback(message), self.suspend_flow.wait())
                            set_read_offset(tp, offset)
                unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)


class Transport(driver.Transport):
    Consumer = Consumer

    def __init__(self, url: Any, app: Any, *, fetch_max_wait_ms: int = 1500, positions: Positions | None = None,
                 positioned_topics: Iterable[str] = (), on_wait_empty: Callable[[], None] | None = None) -> None:
        super().__init__(url, app)
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.positions = positions
        self.positioned_topics = frozenset(positioned_topics)
        self.on_wait_empty = on_wait_empty
