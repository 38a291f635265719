"""The warm stage's watermark: entries of several predict partitions are applied in event-time
order; a source not heard from yet is waited for; a silent one is not, judged by the Kafka
timestamps of what the others sent (not by how fast this partition reads), or by the wall clock
once the partition has read everything; entries that come after all are counted late, never lost."""
import time

import orjson

from cache_warmer.entries import PLAY
from cache_warmer.policies import ThresholdPolicy
from cache_warmer.tiers import TierConfig
from models.events import Catalogue
from models.parsing import TimeWindow
from stream.worker.stages.entry_codec import encode
from stream.worker.stages.held import HeldQueues
from stream.stores.memory import MemoryStore
from stream.worker.stages.warm import BEHIND_WALL_SECONDS, CAUGHT_UP_SECONDS, IDLE_WALL_SECONDS, WarmRuntime



def _runtime(sources=2, store=None):
    store = store or MemoryStore()
    return WarmRuntime(0, store.stage("warm"), Catalogue(), ThresholdPolicy("model", "model"),
                       TierConfig.for_catalogue(Catalogue()), lambda track: True, {"A": "m"}, sources=sources,
                       window=TimeWindow(earliest=0.0))  # event times of a few seconds


class Topic:
    """The warm partition's entries topic: each predict batch one message, Kafka-timestamped."""

    def __init__(self, rt):
        self.rt = rt
        self.offset = 0
        self.seq = {}  # source -> its next offset
        self.t0 = time.time()

    def send(self, src, times, after=0.0):
        """``after``: seconds after the first message it was sent (its Kafka timestamp)."""
        first = self.seq.get(src, 0)
        self.seq[src] = first + len(times)
        entries = [[first + i, PLAY, t, src * 1000 + i, 1, i, f"t{src}-{i}".ljust(22, "x"), "A"] for i, t in enumerate(times)]
        record = (self.offset, encode(src, max(times), entries), self.t0 + after)
        self.offset += 1
        out = self.rt.process([record])
        assert self.rt.commit(out)
        return out


def test_entries_wait_for_a_source_not_heard_from_yet_then_go_in_event_time_order():
    rt = _runtime()
    topic = Topic(rt)
    assert topic.send(0, [10.0, 20.0, 30.0]).events == 0  # partition 1 may still send older plays
    out = topic.send(1, [5.0, 25.0], 1)
    assert out.events == 4  # up to 25 (partition 1's clock): 5, 10, 20, 25; 30 waits
    assert [t for _, t in sorted((e[2], e[2]) for q in rt.queues.values() for e in q)] == [30.0]
    assert rt.late == 0 and rt.applied_until == 25.0


def test_a_source_silent_while_the_others_send_is_not_waited_for_and_its_stragglers_count_late():
    rt = _runtime()
    topic = Topic(rt)
    topic.send(1, [1.0])
    assert topic.send(0, [10.0], 1).events == 1  # partition 1's 1.0
    assert topic.send(0, [20.0], 2).events == 0  # partition 1's clock (1.0) holds 10 and 20 back
    out = topic.send(0, [30.0], IDLE_WALL_SECONDS + 1)  # partition 1 silent for the idle time
    assert out.events == 3 and rt.idle == {1}
    straggler = topic.send(1, [15.0], IDLE_WALL_SECONDS + 2)  # it was only slow
    assert straggler.events == 1 and rt.late == 1 and rt.idle == set()  # applied, counted, waited for again


def test_a_silent_source_with_records_not_predicted_is_slow_not_idle():
    rt = _runtime()
    topic = Topic(rt)
    rt.behind = {1}  # the worker's timer saw sessions partition 1 hold records predict has not committed
    topic.send(1, [1.0])
    assert topic.send(0, [10.0], 1).events == 1
    assert topic.send(0, [20.0], IDLE_WALL_SECONDS + 1).events == 0 and not rt.idle  # starved, not quiet
    out = topic.send(0, [30.0], BEHIND_WALL_SECONDS + 1)  # a predict stage down must not stop the cache
    assert out.events == 3 and rt.idle == {1}


def test_once_read_to_the_end_a_source_that_sent_all_it_has_is_not_waited_for_long():
    rt = _runtime()
    topic = Topic(rt)
    topic.send(1, [1.0])
    topic.send(0, [10.0, 20.0], 1)
    held = sum(len(q) for q in rt.queues.values())
    rt.behind = set()  # the timer: predict committed every record of both sessions partitions
    assert held == 2 and rt.process([]).events == 0  # partition 1 sent just now: a batch may be on its way
    assert not rt.waits_on_quiet_source(time.time())  # the worker's timer leaves a steady flow alone
    rt.since = rt.heard[0] = rt.heard[1] = time.time() - CAUGHT_UP_SECONDS  # (as if) quiet since
    assert rt.waits_on_quiet_source(time.time())
    assert rt.process([]).events == 2 and rt.late == 0  # not the ten seconds of a source nobody knows about


def test_a_backlog_read_late_is_not_taken_for_silence():
    rt = _runtime()
    topic = Topic(rt)
    topic.send(1, [1.0])
    # messages sent a second apart, read by a partition far behind: the stream's own clock says
    # partition 1 went quiet for 2 s, not for the hour this partition took to read them
    assert topic.send(0, [10.0], 1).events == 1  # partition 1's 1.0
    assert topic.send(0, [20.0], 2).events == 0
    assert rt.watermark() == 1.0 and not rt.idle


def test_the_timer_releases_what_a_quiet_source_holds_back_once_the_partition_read_everything():
    rt = _runtime()
    topic = Topic(rt)
    topic.send(0, [10.0, 20.0])
    assert rt.process([]).events == 0  # partition 1 was heard of (loaded) just now: still waited for
    rt.idle_wall_seconds = 0.0  # as if its idle time passed on the wall clock
    out = rt.process([])
    assert out.events == 2 and rt.commit(out)
    assert not any(rt.queues.values()) and rt.late == 0


def test_no_more_than_max_queued_entries_are_held_back():
    rt = _runtime()
    rt.max_queued = 3
    topic = Topic(rt)
    topic.send(1, [1.0])
    out = topic.send(0, [10.0, 20.0, 30.0, 40.0, 50.0], 1)  # partition 1 still holds all of them back
    assert out.events == 3  # 1.0 and the two oldest of partition 0 go; three wait
    assert sum(len(q) for q in rt.queues.values()) == 3


def test_the_watermark_and_the_late_count_survive_a_restart():
    store = MemoryStore()
    rt = _runtime(store=store)
    topic = Topic(rt)
    topic.send(1, [5.0])
    topic.send(0, [10.0, 20.0], 1)
    again = _runtime(store=store)
    assert again.clocks == rt.clocks and again.applied_until == 5.0 and again.late == rt.late
    assert {p: q for p, q in again.queues.items() if q} == {p: q for p, q in rt.queues.items() if q} != {}
    assert again.watermark() == 5.0  # each source waited for, as before the restart


def _stored(rt) -> dict[int, list]:
    """The entries the store holds back for each source, as a restart reads them."""
    state = orjson.loads(rt.store.blob(rt.partition))
    return {src: q for src, q in HeldQueues().load(rt.store, rt.partition, state, "queued").items() if q}


def test_the_store_holds_exactly_the_queues_and_entries_applied_in_their_batch_never_reach_it():
    store = MemoryStore()
    rt = _runtime(store=store)
    topic = Topic(rt)
    topic.send(1, [5.0])
    topic.send(0, [10.0, 20.0], 1)  # held: source 1 is at 5
    topic.send(1, [15.0], 2)  # releases 10, holds 15 (source 0 at 20)
    topic.send(0, [30.0, 40.0], 3)  # releases 15 and 20
    assert _stored(rt) == {src: q for src, q in rt.queues.items() if q}
    pushed = []
    real_commit = rt.store.commit

    def spy(partition, expected, new, changes):
        pushed.append({s: len(e) for s, e in changes.queue_push.items()})
        return real_commit(partition, expected, new, changes)

    topic.send(1, [50.0, 60.0], 4)  # releases 30 and 40 of source 0; 50 and 60 wait for source 0
    rt.store.commit = spy
    topic.send(0, [45.0, 80.0], 5)  # releases 45 (taken in and applied at once), 50 and 60; holds 80
    assert _stored(rt) == {0: rt.queues[0]} and rt.queues[0] != [] and rt.queues.get(1, []) == []
    assert pushed == [{0: 1}]  # only 80 was written to the store


def test_entries_of_several_sources_merge_in_heapq_merges_order_whether_or_not_each_is_in_time_order():
    """``merge_by_time`` sorts when every run is in time order and merges otherwise: both must be
    ``heapq.merge``'s order, ties and out-of-order runs included."""
    import heapq
    import random

    from stream.worker.stages.warm import merge_by_time

    rnd = random.Random(5)
    for trial in range(400):
        runs = []
        for src in range(rnd.randint(2, 4)):
            times = sorted(rnd.choice((1.0, 2.0, 3.0, 4.0, 5.0)) for _ in range(rnd.randint(0, 12)))
            if trial % 3 == 0 and len(times) > 2:  # a resolution stamped later than entries after it
                i = rnd.randrange(len(times) - 1)
                times[i] = times[-1] + 1.0
            runs.append([(src * 100 + i, 0, t) for i, t in enumerate(times)])
        assert merge_by_time(runs) == list(heapq.merge(*runs, key=lambda e: e[2])), runs
