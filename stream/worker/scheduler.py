"""Which of the runs a stage has received it applies next: partitions progress together in event
time.

Faust drains partitions unevenly: left alone, one partition of a replay finished while another
had done under 1%. A partition far behind in event time then reads track counts that already
hold other partitions' *future* plays (a point-in-time leak in the live features), and the warm
stage holds entries back until its idle rule gives up on the slow source. So, as Kafka Streams
chooses the next record by timestamp across a task's partitions, the predict stage applies a
batch only up to a *horizon*: the event time every partition with work has reached. Each
partition's pending records are read up to the horizon; a partition that has records on the
broker (lag) but none received yet holds the horizon at its own clock, so the others wait for it
-- for at most the batch deadline (``SKIPCACHE_BATCH_WITHIN``), then a batch is cut anyway. A
partition with more pending records than a batch holds is *held*: not fetched until it is no
longer ahead (``transport.Consumer.hold``). The warm stage needs none of this (its watermark
orders sources by event time), so its scheduler applies whatever it has.

The predict stage's batches also never pass the track counts' epoch (``models/state.py``) of a
record some partition leaves pending: the checkpoint applies a batch epoch by epoch across its
partitions (``checkpoint.py``), so a partition reads the counts as of an epoch's start only once
every partition has applied or committed its plays of the earlier epochs, and two runs of one
replay read the same counts whatever the fetches did. A partition with records on the broker
and none received holds the others at its epoch for at most ``EPOCH_WAIT_SECONDS`` (a partition
whose fetches stopped must not stop the stage); one caught up, for at most ``EPOCH_IDLE_SECONDS``
(its earlier records may still be in flight).

A run is acknowledged to faust once every record of it has been applied (or released, at a
rebalance, to be re-read from the stored offsets)."""
from __future__ import annotations

import bisect
import itertools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("skipcache.scheduler")


EPOCH_WAIT_SECONDS = 2.0
"""Longest the stage waits at an epoch's end for a partition that has records on the broker and
has received none (past it, the others go on: its plays of the earlier epoch may then be read
late by them, which a log line says). A fetch comes within tens of milliseconds, but in
one-process replays of a full topic (2,000 users) a fetched run sometimes waited over 1 s in
faust's drain loop for an agent busy applying the other partition's backlog, and 1 s then gave up
in about half the runs (the figures inexact). A partition silent longer is in a rebalance or a
broker fault, and a wait of 5 s made the warm stage take the waiting partitions for idle during a
rebalance (71,314 entries applied late); 2 s gave none (bench/RESULTS.md)."""

EPOCH_IDLE_SECONDS = 0.5
"""Longest the stage waits at an epoch's end for a partition that is caught up (nothing on the
broker as far as the last fetch knows) and has not reached the epoch. Its records of the earlier
epoch may be in flight: produced just before the others' later ones, on the broker after the
fetch that gave those (fetches wait at most ``SKIPCACHE_FETCH_MAX_WAIT_MS``); passed at once,
they would be read late by the others. Records held longer than this by their producer are read
late all the same: no wait can know of a record not produced yet (a live replay produced while
read, in CI, once differed from ``simulate`` by one prediction in 53,516 so). A partition quiet for
longer is idle, and is waited for once per silence."""


@dataclass
class Pending:
    """A partition's records received and not applied yet, and the runs (faust events) they came
    in, acknowledged once applied."""

    records: list = field(default_factory=list)
    runs: list[tuple[object, int]] = field(default_factory=list)
    """(faust event, index in ``records`` one past its last record)."""
    first_at: float = 0.0  # monotonic time its oldest pending record arrived
    times: list[float] = field(default_factory=list)
    """Each record's event time (-inf for one without), beside ``records``."""
    _reached: list[float] | None = None
    seen: float = -math.inf
    """The latest event time of any record received (applied or not): where the next come from."""

    def reached(self) -> list[float]:
        """The event time the records have reached at each (a running maximum, so a prefix cut at a
        time is a bisection). Kept up as records come and go: rebuilt whole, it was the stage's
        largest cost on the event loop (a held partition's thousands of records per take)."""
        if self._reached is None:
            self._reached = list(itertools.accumulate(self.times, max))
        return self._reached

    def extend(self, times: list[float]) -> None:
        self.times += times
        reached = self._reached
        if reached is not None:
            running = itertools.accumulate(times, max, initial=reached[-1] if reached else -math.inf)
            next(running)  # the initial value itself
            reached += running

    def cut(self, horizon: float) -> int:
        """How many records (a prefix) lie at or before ``horizon``: up to the first past it."""
        return bisect.bisect_right(self.reached(), horizon)

    def first_time(self, start: int = 0) -> float | None:
        return next((t for t in itertools.islice(self.times, start, None) if t != -math.inf), None)

    def last_time(self) -> float | None:
        return next((t for t in reversed(self.times) if t != -math.inf), None)

    def drop(self, n: int) -> None:
        del self.records[:n]
        reached = self._reached
        if reached is not None and 0 < n < len(reached) and reached[n - 1] <= self.times[n]:
            del reached[:n]  # nothing dropped is later than what follows: the running maximum holds
        elif n:
            self._reached = None
        del self.times[:n]


RESEEK_SECONDS = 1.0
"""Records fetched before a seek can still arrive after it and move the consumer past the
position sought; while the awaited offset does not come, the worker seeks again this often."""


def contiguous_run(records: list[tuple], start: int) -> list[tuple]:
    """The records at offsets start, start+1, ... wherever they sit in ``records``: a batch can mix
    records fetched before a seek with those fetched after it, and only an unbroken run from the
    partition's next offset may be applied."""
    if records and records[0][0] == start and records[-1][0] == start + len(records) - 1:
        return records  # the usual batch: already that run
    at = {r[0]: r for r in records}
    run = []
    while start in at:
        run.append(at[start])
        start += 1
    return run


class RunScheduler:
    def __init__(self, max_records: int, within: float, time_of: Callable[[tuple], float | None] | None = None):
        """``time_of``: a record's event time (None: it constrains nothing); None for a stage that
        is not aligned (everything pending is applied)."""
        self.max_records = max_records
        self.within = within
        self.time_of = time_of
        self.pending: dict[int, Pending] = {}
        self.received_to: dict[int, int] = {}
        """Partition -> the offset after the last record received (``expected``), until released."""
        self.held: set[int] = set()
        self.limit = math.inf
        """The event time the last ``take`` cut at (inf: nothing aligned)."""
        self.epoch_seconds: float | None = None
        """The track counts' epoch (the predict stage's, once the model is known); None: no cut."""
        self.waiting_since: dict[int, float] = {}
        """Partitions with nothing received holding the others at an epoch's end -> since when."""
        self.gave_up: set[int] = set()
        """Those waited for ``EPOCH_WAIT_SECONDS`` (said once, not waited for again while silent)."""

    def expected(self, partition: int, applied: int) -> int:
        """The offset the partition's next record must have: the one after the last it received
        (pending, or taken by a batch still on its way), or ``applied`` (the partition's next
        offset) when it has received none since it was last released."""
        return self.received_to.get(partition, applied)

    def continuing(self, partition: int, records: list, applied: int) -> list | None:
        """What of a fetched run continues the partition's records (``expected``): all of it,
        its part from there (records had already: fetched again after a seek), or None when it
        starts past it. Such a run was fetched before a seek, ahead of the position sought, and
        arrived after it: held pending, its later event times would keep the batches' horizon
        from ever reaching the records the seek brings, while a partition that fills a batch is
        no longer fetched (``held``), and the partition would stall."""
        expected = self.expected(partition, applied)
        if not records or records[0][0] == expected:
            return records
        if records[0][0] > expected:
            return None
        return [r for r in records if r[0] >= expected]

    def add(self, partition: int, run: object, records: list) -> None:
        p = self.pending.get(partition)
        if p is None:
            p = self.pending[partition] = Pending()
        if not p.records:
            p.first_at = time.monotonic()
        p.records.extend(records)
        if records:
            self.received_to[partition] = records[-1][0] + 1
        time_of = self.time_of
        if time_of is not None:
            times = [-math.inf if t is None else t for t in map(time_of, records)]
            p.extend(times)
            if times:
                p.seen = max(p.seen, max(times))
        p.runs.append((run, len(p.records)))

    @property
    def size(self) -> int:
        return sum(len(p.records) for p in self.pending.values())

    def full(self) -> bool:
        return self.size >= self.max_records

    def overdue(self, now: float | None = None) -> bool:
        """The oldest pending record has waited the batch deadline."""
        now = time.monotonic() if now is None else now
        return any(p.records and now - p.first_at >= self.within for p in self.pending.values())

    def take(self, clocks: dict[int, float], lagging: set[int], force: bool = False,
             floors: dict[int, float] | None = None) -> tuple[list, list]:
        """``[(partition, records)]`` to apply now and the runs that are then wholly applied (to
        acknowledge after the commit). ``clocks``: each owned partition's event time applied so
        far; ``lagging``: partitions with records on the broker not received yet. ``force``
        (the deadline passed): do not wait for a partition that has sent nothing. ``floors``:
        per partition, an event time its records may not pass whatever the deadline (how far the
        events other partitions forward to it have come)."""
        self.limit = math.inf
        have = {q: p for q, p in self.pending.items() if p.records}
        if not have:
            return [], []
        cuts = {q: len(p.records) for q, p in have.items()}
        aligned = self.time_of is not None and (len(have) > 1 or bool(lagging - have.keys()))
        if aligned:
            self.limit = horizon = self._horizon(have, clocks, set() if force else lagging)
            cuts = {q: p.cut(horizon) for q, p in have.items()}
        if floors:
            for q, p in have.items():
                floor = floors.get(q, math.inf)
                if floor < math.inf:
                    cuts[q] = min(cuts[q], p.cut(floor))
        firsts = {q: p.first_time() for q, p in have.items()}
        order = sorted(have, key=lambda q: (clocks.get(q, -math.inf) if firsts[q] is None else firsts[q],
                                            clocks.get(q, -math.inf)))  # the one behind first
        if sum(cuts.values()) > self.max_records:
            cuts = self._fill(have, cuts, order)
        if self.time_of is not None and self.epoch_seconds is not None and len(clocks.keys() | have.keys()) > 1:
            # (one partition alone reads its own turns: ``State.reread``)
            end = self._epoch_end(have, cuts, clocks, lagging)
            if end < math.inf:
                self.limit = last = min(self.limit, math.nextafter(end, -math.inf))
                cuts = {q: min(n, have[q].cut(last)) for q, n in cuts.items()}
        work, done = [], []
        for q in order:
            n = cuts[q]
            if n <= 0:
                continue
            p = have[q]
            work.append((q, p.records[:n]))
            p.drop(n)
            runs = p.runs
            k = 0
            while k < len(runs) and runs[k][1] <= n:
                done.append(runs[k][0])
                k += 1
            p.runs = [(run, end - n) for run, end in runs[k:]]
            if p.records:
                p.first_at = time.monotonic()
        self.held = {q for q, p in self.pending.items() if len(p.records) >= self.max_records}
        return work, done

    def _fill(self, have: dict[int, Pending], cuts: dict[int, int], order: list[int]) -> dict[int, int]:
        """A full batch: the ``max_records`` earliest records in event time across the partitions
        (each partition's a prefix), so what a batch leaves is later than what it takes, in every
        partition alike. Without event times: the partitions in ``order``, each as far as it goes."""
        budget = self.max_records
        out = {}
        if self.time_of is None:
            for q in order:
                out[q] = n = max(0, min(cuts[q], budget))
                budget -= n
            return out
        # the budget-th earliest lies within the first budget records of every partition
        reached = np.concatenate([np.asarray(have[q].reached()[:min(cuts[q], budget)], dtype=float) for q in order])
        last = float(np.partition(reached, budget - 1)[budget - 1]) if budget <= len(reached) else math.inf
        for q in order:
            out[q] = min(cuts[q], have[q].cut(last))
        if not any(out.values()):  # a budget of records all at one instant: the first partition's
            out[order[0]] = min(cuts[order[0]], budget)
        return out

    def _epoch_end(self, have: dict[int, Pending], cuts: dict[int, int], clocks: dict[int, float],
                   lagging: set[int]) -> float:
        """Where a batch must stop so that no partition reads the track counts of an epoch
        another partition has records of earlier epochs left in: the end of the earliest epoch of
        a record left pending, or of the latest record received by a partition with nothing
        pending (for ``EPOCH_WAIT_SECONDS`` if it has records on the broker, else for
        ``EPOCH_IDLE_SECONDS``). The checkpoint applies what it takes epoch by epoch
        (``checkpoint.py``), so a batch may span any number of epochs below it."""
        size = self.epoch_seconds
        epochs = []
        for q, p in have.items():
            first = p.first_time(cuts[q])
            if first is not None:
                epochs.append(math.floor(max(first, clocks.get(q, -math.inf)) / size))
        own = min(epochs) if epochs else math.inf
        now = time.monotonic()
        silent = (lagging | clocks.keys()) - have.keys()
        since = self.waiting_since = {q: t for q, t in self.waiting_since.items() if q in silent}
        waiting = []
        for q in silent:
            p = self.pending.get(q)
            clock = max(clocks.get(q, -math.inf), p.seen if p is not None else -math.inf)
            epoch = math.floor(clock / size) if math.isfinite(clock) else -math.inf
            if epoch < own:
                started = since.setdefault(q, now)
                if now - started < (EPOCH_WAIT_SECONDS if q in lagging else EPOCH_IDLE_SECONDS):
                    waiting.append(epoch)
                elif q not in self.gave_up:
                    self.gave_up.add(q)
                    if q in lagging:
                        log.warning("partition %d has records on the broker and sent none for %.0f s: the others go "
                                    "on past its track-count epoch; its plays there may be read late",
                                    q, EPOCH_WAIT_SECONDS)
                    else:
                        log.info("partition %d is caught up and sent nothing for %.1f s at its track-count epoch's "
                                 "end: the others go on (a play of its earlier epoch still to come is read late)",
                                 q, EPOCH_IDLE_SECONDS)
            else:
                since.pop(q, None)
        self.gave_up &= since.keys()
        if waiting:
            return -math.inf if min(waiting) == -math.inf else (min(waiting) + 1) * size
        return (own + 1) * size if own < math.inf else math.inf

    def _horizon(self, have: dict[int, Pending], clocks: dict[int, float], lagging: set[int]) -> float:
        """The event time every partition with work has reached: its last pending record's, or,
        for one with records on the broker only, its clock."""
        reach = []
        for q, p in have.items():
            t = p.last_time()
            reach.append(t if t is not None else clocks.get(q, -math.inf))
        reach += [clocks.get(q, -math.inf) for q in lagging if q not in have]
        return min(reach)

    def release(self, partitions: set[int] | None = None) -> list:
        """Forget the pending records of ``partitions`` (default: all); their runs, to acknowledge
        unapplied (a rebalance: they are re-read from the stored offsets)."""
        out = []
        for q in list(self.received_to):
            if partitions is None or q in partitions:
                del self.received_to[q]
        for q in list(self.pending):
            if partitions is None or q in partitions:
                out += [run for run, _ in self.pending.pop(q).runs]
        self.held &= set(self.pending)
        return out
