"""The one small interface between the live worker and where its state lives.

Three jobs, three interfaces: ``PartitionStore`` (what a partition of one stage owns, with the
offset of the next record to apply: a predict partition its users, sessions and pending
predictions; a warm partition its cache shard; both read and add to the global track counts),
``RuntimeConfig`` (thresholds operators set) and ``ExperimentCounters`` (A/B and event counts).
Code takes the one it needs; a backend (``StateStore``) implements all three.

``commit`` applies a batch's changes and the new offset in one atomic step, and
only if the stored offset is still the one the batch started from: a replayed event never counts
twice, a lost Kafka commit never loses one, and a zombie worker cannot overwrite its successor.
Backends, chosen by URL scheme (``stores/__init__.py``): ``stores/memory.py`` (tests, one
process) and ``stores/redis_store.py`` (Redis or Valkey).

Track counts move in epochs (``models/state.py``): each predict partition stores its additions as
*settled* counts (epochs before its stored epoch), its stored epoch's, and the one before's. A
reader at epoch E takes from each partition what was resolved before E (``epoch_weights``),
exact while the partition is at most one epoch ahead, which the worker's batches keep."""
from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Protocol

from models.state import add_counts


@dataclass
class Changes:
    """What one batch of one partition changed. Records are the engine's small lists."""

    users: dict[int, list] = field(default_factory=dict)
    sessions: dict[tuple[int, int], list] = field(default_factory=dict)
    deleted_sessions: set[tuple[int, int]] = field(default_factory=set)
    tracks: "TrackAdditions | None" = None
    """Additions to the global track counts (plays, skips, likes), not the counts."""
    blob: bytes | None = None
    """The partition's whole-value state (pending predictions; or the cache shard)."""
    counters: dict[str, dict[str, float]] = field(default_factory=dict)  # hash -> field -> increment
    queue_push: dict[int, list] = field(default_factory=dict)
    """Entries appended to the partition's held-back queue of each source, as one element...
    (``stream/worker/stages/held.py``)"""
    queue_drop: dict[int, int] = field(default_factory=dict)
    """...then how many elements leave the head of each (applied): a commit writes what changed,
    not the queue."""
    inputs: dict[str, tuple[int, int]] = field(default_factory=dict)
    """The partition's other inputs (predict: ``repartition``, the events other partitions
    forwarded): name -> (offset the batch began at, new offset), fenced like the main offset,
    so a batch that moves only one input still fences a zombie."""


@dataclass
class TrackAdditions:
    """A predict partition's additions to the track counts in one batch, epoch by epoch. The
    stored epoch's additions (``held``, at ``since``; None: none stored) settle when the partition
    first adds in a later epoch, and stay readable as the last epoch's if that epoch is the one
    just before (``epoch_weights``); so do a batch's own but for its last epoch (``plan``)."""

    since: int | None
    held: dict[str, list]
    by_epoch: list[tuple[int, dict[str, list]]]
    """(epoch, additions) in ascending epochs, none empty."""
    stored: "TrackCounts | None" = field(default=None, compare=False)
    """The partition's stored parts the batch began from, as its runtime keeps them
    (``PredictRuntime.stored_counts``; None: not kept): a store whose commit is fenced on that
    offset may write the sums rather than add in the server."""
    _plan: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def plan(self) -> tuple[bool, dict[str, list], dict[str, list], dict[str, list]]:
        """``(turns, settle, last, now)``: whether the stored epoch moves on (to the last epoch
        here); the additions that join the settled counts (the stored epoch's and every epoch
        here but the last, written once however many epochs the batch spans); the new stored
        epoch's previous epoch's (empty unless it is the one just before); the new stored epoch's.
        Made once: the store's commit and the partition's own copy (``TrackCounts.add``) take it."""
        if self._plan is None:
            final, now = self.by_epoch[-1]
            if final == self.since:
                self._plan = False, {}, {}, now
            else:
                epochs = ([(self.since, self.held)] if self.since is not None else []) + self.by_epoch[:-1]
                settle = merged([adds for _, adds in epochs]) if epochs else {}
                self._plan = True, settle, merged([adds for e, adds in epochs if e == final - 1]), now
        return self._plan


def merged(parts: list[dict[str, list]]) -> dict[str, list]:
    if len(parts) == 1:
        return parts[0]
    if not parts:
        return {}
    out: dict[str, list] = {}
    for part in parts:
        add_counts(out, part)
    return out


@dataclass
class TrackCounts:
    """One predict partition's stored additions: settled (before ``epoch``), ``epoch``'s (``now``)
    and the one before's (``last``); track -> [plays, skips, likes]."""

    epoch: int | None = None
    settled: dict[str, list] = field(default_factory=dict)
    now: dict[str, list] = field(default_factory=dict)
    last: dict[str, list] = field(default_factory=dict)

    def only(self, tracks: "set[str] | list[str]", copy: bool = False) -> "TrackCounts":
        """The parts of ``tracks`` alone (what a read of those tracks gives; the lists shared,
        or with ``copy`` copied: a ``Mirror`` changes in place while a batch reads them)."""
        parts = ({t: v for t in tracks if (v := d.get(t)) is not None} for d in (self.settled, self.now, self.last))
        if copy:
            parts = ({t: list(v) for t, v in part.items()} for part in parts)
        return TrackCounts(self.epoch, *parts)

    def add(self, tracks: "TrackAdditions") -> None:
        """What a commit of ``tracks`` does to the partition's stored parts (as every backend
        stores them: ``stores/memory.py``, the Redis commit's sums or its Function's TRACKADD)."""
        self.apply(tracks.by_epoch[-1][0], *tracks.plan())

    def apply(self, epoch: int, turns: bool, settle: dict[str, list], last: dict[str, list],
              now: dict[str, list]) -> None:
        """``add`` of a commit's plan (``TrackAdditions.plan``) whose last epoch is ``epoch``: a
        ``Mirror`` applies the plans another process's commits logged."""
        if turns:
            add_counts(self.settled, settle)
            self.last, self.now, self.epoch = {}, {}, epoch
            add_counts(self.last, last)
        add_counts(self.now, now)


@dataclass
class CountsLog:
    """What became of a predict partition's stored parts of the track counts since a reader's
    ``Mirror`` of them (``PartitionStore.read_batch``'s ``mirrors``): the plans its commits
    logged after the mirror's, in order, or, where those no longer follow on from the mirror (too
    far behind, the store went back, no mirror yet), the parts whole (``full``)."""

    seq: int
    """How many commits have logged a plan: the last one's number (0: none)."""
    position: int | None
    """The partition's offset after that commit (None: none)."""
    plans: list[tuple] = field(default_factory=list)
    """``TrackCounts.apply``'s arguments, one commit's each."""
    full: TrackCounts | None = None
    too_big: bool = False
    """The parts hold more tracks than the reader keeps: it reads them per batch instead."""


@dataclass
class Mirror:
    """A predict partition's stored parts of the track counts, held by a process that does not
    own it: kept as the store holds them by applying the plans the owner's commits log (a few
    hundred tracks a batch), where a batch would otherwise read its tracks' counts of every such
    partition from the store (the largest server time of a batch when two processes share the
    partitions: ``bench/RESULTS.md``, issue 16)."""

    seq: int = -1
    """Of the last plan applied (``CountsLog.seq``; -1: nothing held yet)."""
    position: int | None = None
    counts: TrackCounts | None = None
    too_big: bool = False

    def since(self) -> tuple[int, int | None]:
        """What the store checks the plans it sends follow on from."""
        return self.seq, self.position

    def update(self, log: CountsLog) -> TrackCounts | None:
        """The parts as the store held them at the read (None: too big to hold, or nothing to
        apply the plans to: the next read gets the parts whole)."""
        if log.too_big:
            self.seq, self.position, self.counts, self.too_big = -1, None, None, True
            return None
        if log.full is not None:
            self.counts = log.full
        elif self.counts is None:  # plans without what they follow on from: read whole next time
            self.seq, self.position = -1, None
            return None
        for plan in log.plans:
            self.counts.apply(*plan)
        self.seq, self.position = log.seq, log.position
        return self.counts


def counts_as_of(parts: list[TrackCounts], epoch: int | None, tracks: "set[str] | list[str]",
                 extra: list[dict[str, list]] = ()) -> dict[str, list]:
    """The global counts of ``tracks`` as of ``epoch``'s start: every predict partition's stored
    parts (``parts``, read for those tracks), weighted by where the partition is
    (``epoch_weights``), and additions the store does not hold yet (``extra``: those of the other
    batches of a running checkpoint)."""
    out: dict[str, list] = {}
    for part in parts:
        a, b = epoch_weights(epoch, part.epoch)
        add_counts(out, part.settled)
        if a:
            add_counts(out, part.now, a)
        if b:
            add_counts(out, part.last, b)
    wanted = tracks if isinstance(tracks, set) else set(tracks)
    for adds in extra:
        add_counts(out, adds, only=wanted)
    return out


def read_counts_as_of(store: "PartitionStore", tracks: list[str], epoch: int | None) -> dict[str, list]:
    """The global counts of ``tracks`` as of ``epoch``'s start (None: everything committed), read
    from ``store`` (``PartitionStore.fetch``'s tracks)."""
    if not tracks:
        return {}
    return counts_as_of(store.track_counts(tracks, None if epoch is None else (epoch, epoch)), epoch, tracks)


def parts_needed(epochs: tuple[int, int] | None, stored: int | None) -> tuple[bool, bool]:
    """Whether a reader whose epochs run from ``epochs[0]`` to ``epochs[1]`` (None: everything
    committed) needs a partition's ``now`` and ``last`` parts: a weight of ``epoch_weights`` other
    than 0 at some epoch of the range. Level with the partition, a reader needs only the settled
    counts; the store reads no more (the read was the largest server time of a batch)."""
    if epochs is None or stored is None:
        return True, False
    lo, hi = epochs
    return hi > stored, lo < stored


def epoch_weights(epoch: int | None, stored: int | None) -> tuple[int, int]:
    """A reader at ``epoch`` takes a partition's settled counts plus ``a`` times its stored
    epoch's plus ``b`` times the epoch's before that: ``(a, b)``. Behind the reader (or no epoch
    stored, or ``epoch`` None: everything committed): all of it; level: the settled counts; one
    ahead: the settled less the epoch before (the reader's own epoch); further ahead: the same,
    which then still holds the epochs between (never seen while the worker's batches go
    epoch by epoch)."""
    if epoch is None or stored is None or stored < epoch:
        return 1, 0
    return (0, 0) if stored == epoch else (0, -1)


@dataclass
class BatchRead:
    """What a predict batch reads before it applies (``PartitionStore.read_batch``)."""

    users: dict[int, list]
    sessions: dict[tuple[int, int], list]
    tracks: list[TrackCounts | None]
    """``track_counts``'s parts (empty without tracks; None for a partition skipped)."""
    position: int | None
    """The partition's offset, read after the rest."""
    logs: dict[int, CountsLog] = field(default_factory=dict)
    """Of the partitions the reader mirrors (``Mirror``): their parts' news, in ``tracks``' stead."""


class StateMoved(Exception):
    """A partition's offset in the store is not the one its runtime applied to: the store's state
    went back (a failover lost acknowledged writes, a restore) or another worker moved it, so what
    a batch just read from it may not match what the runtime holds. The batch is dropped before
    anything of it is sent; the worker re-reads the partition (as after a fenced commit)."""

    def __init__(self, stage: str, partition: int, stored: int | None, applied: int):
        super().__init__(f"{stage} partition {partition}: the store holds offset {stored}, the runtime applied up "
                         f"to {applied}")
        self.stage, self.partition, self.stored, self.applied = stage, partition, stored, applied


class PartitionStore(Protocol):
    """The state of each Kafka partition and the offset it has reached."""

    def offset(self, partition: int) -> int:
        """Offset of the next event to apply (0 if the partition was never seen)."""

    def position(self, partition: int, source: str = "") -> int | None:
        """Offset of the next event to apply; None when the store holds none (new, or lost).
        ``source``: one of the partition's other inputs (``Changes.inputs``)."""

    def init_offset(self, partition: int, offset: int, source: str = "") -> int:
        """Set the partition's offset (of ``source``) if it has none (atomically); return the stored one."""

    def blob(self, partition: int) -> bytes | None:
        """The partition's serialized whole-value state (``Changes.blob``)."""

    def queue(self, partition: int, source: int) -> list:
        """The elements of the queue a partition holds back for ``source``, oldest first: each
        a commit's additions (``Changes.queue_push``), decoded."""

    def fetch(self, partition: int, users: list[int], sessions: list[tuple[int, int]],
              tracks: list[str], epoch: int | None = None
              ) -> tuple[dict[int, list], dict[tuple[int, int], list], dict[str, list]]:
        """The records that exist, by key; tracks: the global counts of the plays resolved
        before ``epoch`` (None: all committed)."""

    def read_batch(self, partition: int, users: list[int], sessions: list[tuple[int, int]], tracks: list[str],
                   epochs: tuple[int, int] | None = None, skip: "Collection[int]" = (),
                   mirrors: "dict[int, tuple[int, int | None]] | None" = None) -> BatchRead:
        """``fetch``'s records, ``track_counts``'s parts and, read last, the partition's
        ``position``, in one round trip: a store that went back (a failover that lost
        acknowledged commits) before the other reads shows it in the offset. ``skip``: predict
        partitions whose parts the caller holds (``stored_counts``): not read, None in their place.
        ``mirrors``: partition -> ``Mirror.since()`` of those the caller mirrors: their news
        (``BatchRead.logs``) instead of their parts, read with the rest (a backend that logs no
        plans reads their parts instead). None of either without ``tracks``."""

    def stored_counts(self, partition: int, limit: int) -> TrackCounts | None:
        """A predict partition's stored parts of the track counts, every track's (None: more than
        ``limit`` tracks): its owner keeps them as its commits change them (``TrackCounts.add``)
        and reads no more of them."""

    def track_counts(self, tracks: list[str], epochs: tuple[int, int] | None = None) -> list[TrackCounts]:
        """Every predict partition's stored parts of the counts of ``tracks`` (``counts_as_of``)
        that a reader at ``epochs`` (its first and last; None: all committed) needs
        (``parts_needed``); the others come back empty."""

    def epoch_plays(self, partition: int) -> tuple[int | None, dict[str, list]]:
        """A predict partition's stored epoch and its additions there (``TrackAdditions.held``)."""

    def stage(self, name: str) -> "PartitionStore":
        """The same store for another stage's partitions (its own offsets and state; the same
        config, counters and track counts)."""

    def commit(self, partition: int, expected_offset: int, new_offset: int, changes: Changes) -> bool:
        """Apply atomically iff the stored offset equals ``expected_offset`` (and each of
        ``changes.inputs`` its expected one); False if fenced. ``changes.counters`` are added to the experiment counters in the same transaction."""


class RuntimeConfig(Protocol):
    """Settings operators change without a restart (the thresholds); workers poll them."""

    def config(self) -> dict[str, float]: ...

    def set_config(self, **values: float) -> None: ...


class ExperimentCounters(Protocol):
    """Counters every worker adds to (A/B confusion cells, events by type, rejections)."""

    def counters(self, name: str) -> dict[str, float]: ...

    def reset_counters(self, name: str) -> None: ...


class StateStore(PartitionStore, RuntimeConfig, ExperimentCounters, Protocol):
    """One backend plays all three parts (they share a Redis and its transactions)."""

    def ping(self) -> bool: ...
