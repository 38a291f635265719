"""Track counts move by epoch (``models/state.py``): each predict partition stores its additions
as settled, its stored epoch's and the one before's, and a reader at epoch E takes from each
what was resolved before E (``stream/store.py``). The same checks run on Redis and on a cluster
(``tests/integration/test_cluster.py`` calls ``check_epoch_reads`` and ``check_mirrors``)."""
import math

from stream.store import Changes, Mirror, TrackAdditions, TrackCounts, counts_as_of, epoch_weights
from stream.stores.memory import MemoryStore
from stream.worker.scheduler import RunScheduler

T = "t" * 22


def _commit(store, partition, since, held, by_epoch, kept=None):
    """``kept``: partition -> the stored parts as the partition's owner keeps them (``TrackCounts.add``),
    given to the store with the commit (it may then write the sums rather than add in the server)."""
    offset = store.offset(partition)
    stored = kept.get(partition) if kept is not None else None
    assert store.commit(partition, offset, offset + 1, Changes(tracks=TrackAdditions(since, held, by_epoch, stored)))
    if kept is not None:
        kept.setdefault(partition, TrackCounts()).add(TrackAdditions(since, held, by_epoch))
        assert store.stored_counts(partition, 10) == kept[partition], partition  # what the store holds


def check_epoch_reads(store) -> None:
    """Partition 0 adds 1 play in epoch 10, 2 in 11, then (one batch spanning two epochs) 4 in 13
    and 8 in 14; partition 1 adds 16 in epoch 11. Each reader epoch sees what came before it.
    The owner of each partition keeps its stored parts as its commits change them: they equal
    the store's after every commit."""
    def read(epoch):
        got = store.fetch(0, [], [], [T], epoch)[2]
        return got.get(T, [0.0, 0.0, 0.0])[0]

    kept: dict[int, TrackCounts] = {}
    assert store.stored_counts(0, 10) == TrackCounts()  # nothing stored yet

    _commit(store, 0, None, {}, [(10, {T: [1, 1, 0]})], kept)
    assert store.epoch_plays(0) == (10, {T: [1.0, 1.0, 0.0]})
    assert (read(10), read(11), read(None)) == (0, 1, 1)
    _commit(store, 0, 10, {T: [1, 1, 0]}, [(11, {T: [2, 0, 1]})], kept)
    _commit(store, 1, None, {}, [(11, {T: [16, 0, 0]})], kept)
    assert (read(10), read(11), read(12)) == (0, 1, 19)  # partition 0 one epoch ahead of 10: less its 11
    _commit(store, 0, 11, {T: [2, 0, 1]}, [(13, {T: [4, 0, 0]}), (14, {T: [8, 0, 0]})], kept)
    assert store.epoch_plays(0) == (14, {T: [8.0, 0.0, 0.0]})
    assert kept[0] == TrackCounts(14, {T: [7, 1, 1]}, {T: [8, 0, 0]}, {T: [4, 0, 0]})
    assert store.stored_counts(0, 0) is None  # past the limit: read like other processes' partitions
    assert (read(12), read(13), read(14), read(15)) == (19, 19, 23, 31)
    assert store.fetch(1, [], [], [T], 14)[2] == {T: [23.0, 1.0, 1.0]}  # skips and likes alike
    # a reader whose epochs run from lo to hi reads only the parts it needs (partition 0 stores
    # 14, partition 1 11), and at each of its epochs counts what reading every part counts
    everything = store.track_counts([T], (0, 99))
    assert [(p.epoch, bool(p.now), bool(p.last)) for p in everything] == [(14, True, True), (11, True, False)]
    for lo in range(10, 17):
        for hi in range(lo, 17):
            parts = store.track_counts([T], (lo, hi))
            for e in range(lo, hi + 1):
                assert counts_as_of(parts, e, [T]) == counts_as_of(everything, e, [T]), (lo, hi, e)
    level, behind = store.track_counts([T], (14, 14))
    assert ([*map(float, level.settled[T])], level.now, level.last) == ([7.0, 1.0, 1.0], {}, {})  # level: settled alone
    assert [*map(float, behind.now[T])] == [16.0, 0.0, 0.0]
    assert [bool(p.last) for p in store.track_counts([T], (13, 13))] == [True, False]  # 0 ahead of 13: less its 13
    # a batch's reads in one round trip: the same parts, the records that exist, and the offset
    user, session = [1.0, 2.0], [3.0]
    assert store.commit(1, 1, 2, Changes(users={7: user}, sessions={(7, 70): session}))
    for epochs in ((13, 14), (14, 14), (10, 16), None):
        got = store.read_batch(1, [7, 8], [(7, 70), (7, 71)], [T, "u" * 22], epochs)
        assert got.tracks == store.track_counts([T, "u" * 22], epochs), epochs
        assert (got.users, got.sessions, got.position) == ({7: user}, {(7, 70): session}, 2)
        for skip in ({0}, {1}, {0, 1}):  # the partitions a batch holds the parts of are not read
            without = store.read_batch(1, [7], [], [T, "u" * 22], epochs, skip)
            assert without.tracks == [None if p in skip else part for p, part in enumerate(got.tracks)], skip
            assert (without.users, without.position) == ({7: user}, 2)
    assert store.read_batch(0, [], [], [], (14, 14)).position == 3 and store.read_batch(5, [], [], [T]).position is None


def check_mirrors(store, how: str, keep: int = 0) -> None:
    """Another process's ``Mirror`` of partition 0's parts equals what the store holds after
    every read. ``how``: ``logged`` (the store logs each commit's plan and keeps ``keep`` of
    them: a mirror that follows on gets the new plans alone), ``whole`` (it sends the parts
    whole every time) or ``unlogged`` (no Functions: the parts are read, as without a mirror).
    A mirror that fell behind the log, or whose last plan the store no longer holds (it went
    back), gets the parts whole; parts past the limit are not mirrored."""
    mirror = Mirror()
    logged = how == "logged"

    def read(limit: int = 10**6):
        got = store.read_batch(1, [], [], [T, "u" * 22], (13, 15), (), {0: mirror.since()}, limit)
        if how == "unlogged":
            assert got.logs == {} and got.tracks == store.track_counts([T, "u" * 22], (13, 15))
            return None
        assert set(got.logs) == {0} and all(part is None or part == TrackCounts() for part in got.tracks)
        log = got.logs[0]
        held = mirror.update(log)
        assert held == store.stored_counts(0, limit)
        return log

    if how == "unlogged":
        _commit(store, 0, None, {}, [(10, {T: [1, 1, 0]})])
        read()
        return
    assert read().full == TrackCounts() and mirror.seq == 0  # nothing committed yet
    _commit(store, 0, None, {}, [(10, {T: [1, 1, 0]})])
    assert read().full is not None  # the first plan after nothing: whole
    _commit(store, 0, 10, {T: [1, 1, 0]}, [(11, {T: [2, 0, 1]})])
    _commit(store, 0, 11, {T: [2, 0, 1]}, [(13, {T: [4, 0, 0]}), (14, {T: [8, 0, 0]})])
    log = read()
    assert (log.full is None, len(log.plans)) == ((True, 2) if logged else (False, 0))
    assert mirror.counts == TrackCounts(14, {T: [7, 1, 1]}, {T: [8, 0, 0]}, {T: [4, 0, 0]})
    log = read()
    assert (log.full is None, log.plans) == (logged, [])  # nothing new
    if logged:
        kept = {0: store.stored_counts(0, 10**6)}  # the owner's copy: its commits write the sums
        for _ in range(keep + 1):  # more commits than the log keeps: whole
            _commit(store, 0, 14, kept[0].now, [(14, {"u" * 22: [1, 0, 0]})], kept)
        assert read().full is not None
        seq, at = mirror.since()
        _commit(store, 0, 14, {}, [(14, {"u" * 22: [1, 0, 0]})])
        assert read().plans and mirror.seq == seq + 1
        mirror.position = at  # what the store's plan of that number says no longer matches: whole
        assert read().full is not None and mirror.since() == (seq + 1, at + 1)
    assert read(limit=0).too_big and mirror.too_big and mirror.counts is None


def test_a_reader_takes_what_each_partition_resolved_before_its_epoch():
    check_epoch_reads(MemoryStore())


def test_a_mirror_of_another_process_partition_is_what_the_store_holds():
    check_mirrors(MemoryStore(), "whole")


def test_the_weights_of_a_partitions_counts_by_where_it_is():
    assert epoch_weights(None, 12) == (1, 0)  # no epoch: everything committed
    assert epoch_weights(12, None) == epoch_weights(12, 11) == (1, 0)  # behind: all it has
    assert epoch_weights(12, 12) == (0, 0)  # level: the settled counts
    assert epoch_weights(12, 13) == (0, -1)  # ahead: less the reader's own epoch


def test_additions_spanning_epochs_are_written_once():
    plan = TrackAdditions(5, {T: [1, 0, 0]}, [(5, {T: [2, 0, 0]}), (6, {T: [4, 0, 0]}), (7, {T: [8, 0, 0]})]).plan()
    assert plan == (True, {T: [7, 0, 0]}, {T: [4, 0, 0]}, {T: [8, 0, 0]})  # 5 and 6 settle; 6 is 7's last
    plan = TrackAdditions(5, {T: [1, 0, 0]}, [(5, {T: [2, 0, 0]}), (8, {T: [8, 0, 0]})]).plan()
    assert plan == (True, {T: [3, 0, 0]}, {}, {T: [8, 0, 0]})  # 7 had none: no last epoch to keep
    assert TrackAdditions(5, {T: [1, 0, 0]}, [(5, {T: [2, 0, 0]})]).plan() == (False, {}, {}, {T: [2, 0, 0]})
    assert TrackAdditions(None, {}, [(5, {T: [2, 0, 0]})]).plan() == (True, {}, {}, {T: [2, 0, 0]})


def _records(start, times):
    return [(start + i, b"", None, t) for i, t in enumerate(times)]


def test_a_batch_spans_epochs_but_never_passes_one_a_partition_leaves_records_of():
    day = 100.0
    s = RunScheduler(1000, 0.1, time_of=lambda r: r[3])
    s.epoch_seconds = day
    s.add(0, "a", _records(0, [10, 90, 110, 150, 210]))
    s.add(1, "b", _records(0, [50, 120, 260, 270]))
    work, _ = s.take(clocks={0: -math.inf, 1: -math.inf}, lagging=set())
    # up to the time both reached (210); what 1 leaves is in epoch 2: epochs 0..2 in one batch
    assert dict(work) == {0: _records(0, [10, 90, 110, 150, 210]), 1: _records(0, [50, 120])}
    s = RunScheduler(4, 0.1, time_of=lambda r: r[3])  # a batch of 4 records at most
    s.epoch_seconds = day
    s.add(0, "a", _records(0, [10, 90, 110, 150, 210]))
    s.add(1, "b", _records(0, [50, 120, 260, 270]))
    work, _ = s.take(clocks={0: 5, 1: 40}, lagging=set())
    # the 4 earliest records of both: what a full batch leaves is later than what it takes
    assert dict(work) == {0: _records(0, [10, 90, 110]), 1: _records(0, [50])}
    s.add(1, "c", _records(4, [150]))
    s.add(0, "d", _records(5, [20]))  # a late record in epoch 0: nothing past epoch 1 goes with it
    work, _ = s.take(clocks={0: 110, 1: 50}, lagging=set())
    assert s.limit < 2 * day


def test_a_silent_partition_holds_the_others_at_its_epoch_then_is_given_up(monkeypatch):
    import stream.worker.scheduler as scheduler
    now = [1000.0]
    monkeypatch.setattr(scheduler.time, "monotonic", lambda: now[0])
    s = RunScheduler(1000, 0.1, time_of=lambda r: r[3])
    s.epoch_seconds = 100.0
    s.add(0, "a", _records(0, [150, 250]))
    work, _ = s.take(clocks={0: 120, 1: 90}, lagging={1}, force=True)  # 1 is in epoch 0, sent nothing
    assert work == []
    now[0] += scheduler.EPOCH_WAIT_SECONDS + 1
    work, _ = s.take(clocks={0: 120, 1: 90}, lagging={1}, force=True)
    assert dict(work) == {0: _records(0, [150, 250])} and s.gave_up == {1}
    s.add(0, "c", _records(2, [350]))
    work, _ = s.take(clocks={0: 250, 1: 90}, lagging={1}, force=True)  # not waited for again
    assert dict(work) == {0: _records(2, [350])}


def test_a_caught_up_partition_behind_the_epoch_holds_the_others_briefly(monkeypatch):
    """Its records of the earlier epoch may be in flight (produced before the others' later ones,
    on the broker after the fetch that gave those): it is waited for ``EPOCH_IDLE_SECONDS``, once
    per silence; one that has reached the epoch holds nothing."""
    import stream.worker.scheduler as scheduler
    now = [1000.0]
    monkeypatch.setattr(scheduler.time, "monotonic", lambda: now[0])
    s = RunScheduler(1000, 0.1, time_of=lambda r: r[3])
    s.epoch_seconds = 100.0
    s.add(0, "a", _records(0, [90, 150, 250]))
    work, _ = s.take(clocks={0: 80, 1: 95}, lagging=set(), force=True)  # 1 has nothing on the broker
    assert dict(work) == {0: _records(0, [90])}  # its own epoch, not past it
    now[0] += scheduler.EPOCH_IDLE_SECONDS / 2
    assert s.take(clocks={0: 90, 1: 95}, lagging=set(), force=True)[0] == []
    now[0] += scheduler.EPOCH_IDLE_SECONDS
    work, _ = s.take(clocks={0: 90, 1: 95}, lagging=set(), force=True)
    assert dict(work) == {0: _records(1, [150, 250])} and s.gave_up == {1}
    s.add(0, "b", _records(3, [350]))
    work, _ = s.take(clocks={0: 250, 1: 95}, lagging=set(), force=True)  # not waited for again while silent
    assert dict(work) == {0: _records(3, [350])}
    s = RunScheduler(1000, 0.1, time_of=lambda r: r[3])
    s.epoch_seconds = 100.0
    s.add(0, "a", _records(0, [150, 250]))
    work, _ = s.take(clocks={0: 120, 1: 310}, lagging=set(), force=True)  # 1 is past them: nothing to wait for
    assert dict(work) == {0: _records(0, [150, 250])}


def test_a_full_batch_always_takes_the_earliest_records_pending():
    """A full batch takes the earliest records in event time (not the partition whose clock is
    behind first): else the epoch cut could leave a full batch empty, and the stage would stall."""
    s = RunScheduler(4, 0.1, time_of=lambda r: r[3])
    s.epoch_seconds = 100.0
    s.add(0, "a", _records(0, [250, 260, 270, 280, 290]))
    s.add(1, "b", _records(0, [150, 160, 170, 180, 290]))
    work, _ = s.take(clocks={0: 5, 1: 140}, lagging=set())
    assert dict(work) == {1: _records(0, [150, 160, 170, 180])}


def test_a_mirror_given_plans_without_what_they_follow_asks_for_the_parts_whole():
    from stream.store import CountsLog
    mirror = Mirror()
    assert mirror.update(CountsLog(3, 30, [(14, False, {}, {}, {T: [1, 0, 0]})])) is None
    assert mirror.since() == (-1, None) and not mirror.too_big
    held = mirror.update(CountsLog(3, 30, full=TrackCounts(14, {}, {T: [1, 0, 0]}, {})))
    assert held == TrackCounts(14, {}, {T: [1, 0, 0]}, {}) and mirror.since() == (3, 30)
    assert mirror.update(CountsLog(4, 31, [(14, False, {}, {}, {T: [2, 0, 0]})])).now == {T: [3, 0, 0]}
