"""Partitions progress together in event time: the predict stage applies a batch only up to the
event time every partition with work has reached, waits for a partition behind for at most the
batch deadline, holds back one whose received records fill a batch, and acknowledges a run only
once all of it has been applied."""
import math

from stream.worker.scheduler import RunScheduler


class FakeRun:
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name


def _records(start, times):
    """(offset, value, kafka ts, item) with the event time at index 3 (as event_time reads it)."""
    return [(start + i, b"", None, t) for i, t in enumerate(times)]


def _scheduler(max_records=100, within=0.1):
    return RunScheduler(max_records, within, time_of=lambda r: r[3])


def test_a_batch_stops_at_the_event_time_every_partition_has_reached():
    s = _scheduler()
    a, b = FakeRun("a"), FakeRun("b")
    s.add(0, a, _records(0, [10, 20, 30, 40]))
    s.add(1, b, _records(0, [15, 25]))
    work, done = s.take(clocks={0: -math.inf, 1: -math.inf}, lagging=set())
    assert dict(work) == {0: _records(0, [10, 20]), 1: _records(0, [15, 25])}
    assert done == [b]  # a still has records 30 and 40 waiting: acknowledged once applied
    work, done = s.take(clocks={0: 20, 1: 25}, lagging=set())  # nothing else has work: all of it
    assert dict(work) == {0: _records(2, [30, 40])} and done == [a]


def test_the_partition_behind_goes_first():
    s = _scheduler()
    s.add(0, FakeRun("a"), _records(0, [50]))
    s.add(1, FakeRun("b"), _records(0, [50]))
    work, _ = s.take(clocks={0: 40, 1: 10}, lagging=set())
    assert [p for p, _ in work] == [1, 0]


def test_a_partition_with_records_on_the_broker_holds_the_others_at_its_clock_until_the_deadline():
    s = _scheduler()
    s.add(0, FakeRun("a"), _records(0, [10, 20, 30]))
    work, done = s.take(clocks={0: 5, 1: 15}, lagging={1})
    assert dict(work) == {0: _records(0, [10])} and done == []
    assert s.take(clocks={0: 10, 1: 15}, lagging={1}) == ([], [])  # waits for partition 1
    work, done = s.take(clocks={0: 10, 1: 15}, lagging={1}, force=True)  # the deadline passed
    assert dict(work) == {0: _records(1, [20, 30])} and len(done) == 1


def test_rejected_records_go_with_their_neighbours():
    s = _scheduler()
    s.add(0, FakeRun("a"), _records(0, [10, None, 30]))
    s.add(1, FakeRun("b"), _records(0, [20]))
    work, _ = s.take(clocks={}, lagging=set())
    assert dict(work)[0] == _records(0, [10, None])


def test_a_partition_whose_records_fill_a_batch_is_held_back_and_a_batch_is_capped():
    s = _scheduler(max_records=3)
    s.add(0, FakeRun("a"), _records(0, [1, 2, 3, 4, 5]))
    s.add(1, FakeRun("b"), _records(0, [100]))
    assert s.full()
    work, _ = s.take(clocks={}, lagging=set())
    assert sum(len(r) for _, r in work) == 3
    s2 = _scheduler(max_records=3)
    s2.add(0, FakeRun("a"), _records(0, [1, 2, 3, 4, 5, 6, 7]))
    s2.add(1, FakeRun("b"), _records(0, [2]))
    s2.take(clocks={}, lagging={1})
    assert s2.held == {0}  # far ahead: not fetched until the others come level


def test_without_event_times_everything_pending_is_applied_and_the_deadline_is_per_record():
    s = RunScheduler(100, within=0.0)
    s.add(0, FakeRun("a"), [(0, b""), (1, b"")])
    s.add(1, FakeRun("b"), [(0, b"")])
    assert s.overdue()
    work, done = s.take(clocks={}, lagging={0, 1})
    assert sorted(p for p, _ in work) == [0, 1] and len(done) == 2 and s.size == 0


def test_release_hands_back_the_runs_of_the_partitions_given():
    s = _scheduler()
    a, b = FakeRun("a"), FakeRun("b")
    s.add(0, a, _records(0, [1]))
    s.add(1, b, _records(0, [2]))
    assert s.release({1}) == [b] and set(s.pending) == {0}
    assert s.release() == [a] and s.size == 0


def test_the_running_maximum_kept_up_as_records_come_and_go_equals_one_computed_afresh():
    """``Pending.reached`` is extended and cut rather than rebuilt per take; records out of order
    and without times included."""
    import itertools
    import random

    from stream.worker.scheduler import Pending

    rng = random.Random(11)
    p = Pending()
    for step in range(400):
        if rng.random() < 0.6:
            times = [rng.choice((-math.inf, rng.uniform(0, 1000))) if rng.random() < 0.1 else step + rng.uniform(-5, 5)
                     for _ in range(rng.randrange(0, 30))]
            p.records += times
            p.extend(times)
        else:
            p.drop(rng.randrange(0, len(p.records) + 1))
        if rng.random() < 0.5:
            assert p.reached() == list(itertools.accumulate(p.times, max))
            horizon = step + rng.uniform(-10, 10)
            assert p.cut(horizon) == next((i for i, t in enumerate(p.reached()) if t > horizon), len(p.times))


def test_records_fetched_before_a_seek_and_held_pending_would_stall_both_partitions():
    """Why a run that does not continue a partition's records is not taken in (``continuing``):
    after a re-read from Redis (the partitions sought back), runs fetched before the seek, ahead
    of it and later in event time, still arrive. Held pending before the records the seek brings,
    they keep every batch's horizon short of those, and, a batch's worth, keep the partitions from
    being fetched (``held``): no batch is ever cut. (The benchmark's replay of 317,045 events
    stalled so, every time a batch found Redis moved mid-backlog.)"""
    s = _scheduler(max_records=4)
    s.add(0, FakeRun("stale0"), _records(90, [900, 901, 902, 903]))  # fetched before the seek
    s.add(1, FakeRun("stale1"), _records(80, [800, 801, 802, 803]))
    s.add(0, FakeRun("sought0"), _records(10, [100, 101]))  # what the seek brought
    s.add(1, FakeRun("sought1"), _records(10, [110, 111]))
    for _ in range(3):
        work, _ = s.take(clocks={0: 99, 1: 109}, lagging=set(), force=True)
        assert work == [] and s.held == {0, 1}  # stuck: nothing to apply, nothing fetched


def test_a_run_is_taken_in_only_where_it_continues_what_the_partition_received():
    s = _scheduler()
    assert s.continuing(0, _records(10, [1, 2]), applied=10) == _records(10, [1, 2])  # from the next offset
    assert s.continuing(0, _records(12, [1, 2]), applied=10) is None  # past it: fetched before a seek
    # its part from there: the rest was had already
    assert s.continuing(0, _records(8, [1, 2, 3, 4]), applied=10) == [(10, b"", None, 3), (11, b"", None, 4)]
    s.add(0, FakeRun("a"), _records(10, [1, 2]))
    assert s.expected(0, applied=10) == 12
    s.take(clocks={0: -math.inf}, lagging=set())  # taken by a batch still on its way: not applied yet
    assert s.expected(0, applied=10) == 12 and s.continuing(0, _records(12, [3]), applied=10) == _records(12, [3])
    assert s.continuing(0, _records(10, [1, 2]), applied=10) == []  # had already, all of it
    s.release({0})  # re-read from Redis: what comes next continues from the partition's next offset
    assert s.expected(0, applied=11) == 11
    assert s.continuing(0, _records(12, [3]), applied=11) is None
