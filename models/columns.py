"""An export's events as typed columns: 34 bytes an event instead of a ~200-byte object.

The offline jobs (evaluate, train, sweep, simulate, replay) hold every event of an export at
once; as objects an 18M-event export needs ~19 GB. Here each field is one numpy array and track
ids are interned once into ``tracks`` (``track`` and ``next_track`` index it, -1 for none).

``EventColumns`` is also a read-only sequence of ``Event``: indexing or iterating makes the
objects on the fly, a slice at a time, so the one feature engine, which reads an ``Event``,
serves the offline jobs and the live worker alike while only a batch is ever materialised."""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from .events import EVENT_TYPES, PLAY, SESSION_END, SKIP, Event

KIND_CODE = {kind: code for code, kind in enumerate(EVENT_TYPES)}
PLAY_CODE, SKIP_CODE, END_CODE = KIND_CODE[PLAY], KIND_CODE[SKIP], KIND_CODE[SESSION_END]
FIELDS = ("ts", "hour", "user", "session", "kind", "track", "next_track")
DTYPES = (np.float64, np.int8, np.int64, np.int64, np.int8, np.int32, np.int32)
MATERIALISE = 65_536
"""Events made per step when iterating: enough to amortise the column reads, small in memory."""


class EventColumns(Sequence):
    __slots__ = (*FIELDS, "tracks")

    def __init__(self, ts, hour, user, session, kind, track, next_track, tracks: list[str]):
        self.ts, self.hour, self.user, self.session = ts, hour, user, session
        self.kind, self.track, self.next_track = kind, track, next_track
        self.tracks = tracks

    # ---- building ---------------------------------------------------------------------------
    @classmethod
    def empty(cls, tracks: list[str] | None = None) -> "EventColumns":
        return cls(*(np.empty(0, d) for d in DTYPES), tracks if tracks is not None else [])

    @classmethod
    def from_events(cls, events: Sequence[Event]) -> "EventColumns":
        index: dict[str, int] = {}
        tracks: list[str] = []

        def ix(track: str | None) -> int:
            if track is None:
                return -1
            i = index.get(track)
            if i is None:
                i = index[track] = len(tracks)
                tracks.append(track)
            return i

        n = len(events)
        return cls(np.fromiter((e.ts for e in events), np.float64, n),
                   np.fromiter((e.hour for e in events), np.int8, n),
                   np.fromiter((e.user_id for e in events), np.int64, n),
                   np.fromiter((e.session_id for e in events), np.int64, n),
                   np.fromiter((KIND_CODE[e.kind] for e in events), np.int8, n),
                   np.fromiter((ix(e.track_id) for e in events), np.int32, n),
                   np.fromiter((ix(e.next_track_id) for e in events), np.int32, n), tracks)

    @classmethod
    def of(cls, events: "Sequence[Event] | EventColumns") -> "EventColumns":
        return events if isinstance(events, EventColumns) else cls.from_events(events)

    @classmethod
    def concat(cls, parts: list["EventColumns"], tracks: list[str]) -> "EventColumns":
        """Parts indexing the same ``tracks`` vocabulary, end to end."""
        if not parts:
            return cls.empty(tracks)
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in FIELDS), tracks)

    def take(self, index: np.ndarray) -> "EventColumns":
        return EventColumns(*(getattr(self, f)[index] for f in FIELDS), self.tracks)

    # ---- reading as events ------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ts)

    def __getitem__(self, i):
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step != 1:
                return [self._events(j, j + 1)[0] for j in range(start, stop, step)]
            return self._events(start, stop)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("event index out of range")
        return self._events(i, i + 1)[0]

    def __iter__(self) -> Iterator[Event]:
        for start in range(0, len(self), MATERIALISE):
            yield from self._events(start, start + MATERIALISE)

    def drain(self, chunk: int = 1 << 20) -> Iterator[Event]:
        """Iterate the events once, giving each chunk's memory back once it is passed: the
        columns are copied into chunks of ``chunk`` events and this object is emptied. For a
        caller that is done with the columns after one pass (a play table of 15M events would
        otherwise hold them to its last row)."""
        parts = [EventColumns(*(getattr(self, f)[i:i + chunk].copy() for f in FIELDS), self.tracks)
                 for i in range(0, len(self), chunk)]
        for f, dtype in zip(FIELDS, DTYPES):
            setattr(self, f, np.empty(0, dtype))
        parts.reverse()
        while parts:
            part = parts.pop()
            yield from part
            del part

    def _events(self, start: int, stop: int) -> list[Event]:
        vocab = self.tracks + [None]  # index -1 is the None at the end
        kinds = EVENT_TYPES
        return [Event(ts, hour, user, session, kinds[kind], vocab[track], vocab[nxt])
                for ts, hour, user, session, kind, track, nxt in zip(
                    self.ts[start:stop].tolist(), self.hour[start:stop].tolist(), self.user[start:stop].tolist(),
                    self.session[start:stop].tolist(), self.kind[start:stop].tolist(),
                    self.track[start:stop].tolist(), self.next_track[start:stop].tolist())]

    # ---- facts ------------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        return sum(getattr(self, f).nbytes for f in FIELDS)

    @property
    def plays(self) -> int:
        return int(np.count_nonzero(self.kind == PLAY_CODE))

    def distinct_tracks(self) -> int:
        """Tracks any event names (as ``{e.track_id for e in events if e.track_id}``)."""
        used = self.track[self.track >= 0]
        return int(np.count_nonzero(np.bincount(used, minlength=len(self.tracks)))) if len(used) else 0

    def session_starts(self) -> np.ndarray:
        """Where each run of one (user, session) begins: the exports keep a session's events
        together, so a session is a run of rows."""
        n = len(self)
        if n == 0:
            return np.empty(0, np.int64)
        change = np.empty(n, bool)
        change[0] = True
        np.not_equal(self.user[1:], self.user[:-1], out=change[1:])
        change[1:] |= self.session[1:] != self.session[:-1]
        return np.flatnonzero(change)


def session_ids(starts: np.ndarray, n: int) -> np.ndarray:
    """Each row's session run number, from the runs' starts."""
    group = np.zeros(n, np.int64)
    if len(starts) > 1:
        group[starts[1:]] = 1
    return np.cumsum(group, out=group)


def replay_columns(cols: EventColumns, mark_session_end: bool = True) -> EventColumns:
    """``models.replay.replay_order`` on columns, with the same result: each session sorted by
    time and ``TIE_RANK`` (stably), ``next_track`` filled from the session's next play, an end marker after each
    session (its last event's time and hour), then everything stably sorted by time."""
    n = len(cols)
    if n == 0:
        return cols
    starts = cols.session_starts()
    group = session_ids(starts, n)
    # sessions are runs, so sorting by (run, time, tie rank) sorts each session in place
    rank = np.where(cols.kind == SKIP_CODE, 0, np.where(cols.kind == PLAY_CODE, 2, 1)).astype(np.int8)
    order = np.lexsort((rank, cols.ts, group))
    del rank
    if np.array_equal(order, np.arange(n)):
        s = EventColumns(cols.ts, cols.hour, cols.user, cols.session, cols.kind, cols.track,
                         cols.next_track.copy(), cols.tracks)
    else:
        s = cols.take(order)
    del order
    plays = np.flatnonzero(s.kind == PLAY_CODE)
    if len(plays) > 1:
        a, b = plays[:-1], plays[1:]
        fill = (group[a] == group[b]) & (s.next_track[a] < 0)
        s.next_track[a[fill]] = s.track[b[fill]]
    if mark_session_end:
        ends = np.r_[starts[1:], n] - 1
        k = len(ends)
        total = n + k
        slot = np.arange(n) + group  # each earlier session put one marker before this event
        mark = ends + np.arange(1, k + 1)
        merged = []
        for f, dtype in zip(FIELDS, DTYPES):
            out = np.empty(total, dtype)
            col = getattr(s, f)
            out[slot] = col
            if f in ("ts", "hour", "user", "session"):
                out[mark] = col[ends]
            elif f == "kind":
                out[mark] = END_CODE
            else:
                out[mark] = -1
            merged.append(out)
        s = EventColumns(*merged, cols.tracks)
        del slot, mark, merged
    order = np.argsort(s.ts, kind="stable")
    return s.take(order)


def session_labels(cols: EventColumns) -> tuple[np.ndarray, np.ndarray, int]:
    """``models.labels.label_session`` over every session run at once: the label of each play
    (1 full, 0 skipped) in row order, each play's session run, and the number of orphan skips.

    A play is skipped when a skip of its track comes after it and before the session's next
    play; the first such skip resolves it, any other skip is an orphan."""
    n = len(cols)
    if n == 0:
        return np.empty(0, np.int8), np.empty(0, np.int64), 0
    starts = cols.session_starts()
    group = session_ids(starts, n)
    kind = cols.kind
    is_play = kind == PLAY_CODE
    idx = np.where(is_play | (kind == END_CODE), np.arange(n), -1)
    np.maximum.accumulate(idx, out=idx)  # each row's latest play (or session end) so far
    # ... within its own session, and not closed by an end marker
    last_play = np.where((idx >= starts[group]) & is_play[np.maximum(idx, 0)], idx, -1)
    skips = np.flatnonzero(kind == SKIP_CODE)
    target = last_play[skips]
    hit = target >= 0
    hit[hit] = cols.track[skips[hit]] == cols.track[target[hit]]
    resolved = target[hit]
    # the first matching skip of a play resolves it; repeats are orphans
    first = np.unique(resolved)
    orphans = len(skips) - len(first)
    label = np.ones(n, np.int8)
    label[first] = 0
    plays = np.flatnonzero(is_play)
    return label[plays], group[plays], orphans
