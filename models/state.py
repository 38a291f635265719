"""The mutable state the feature engine and the cache warmer read and write, with change tracking.

It is deliberately plain dicts of small lists: the in-memory store keeps one State forever; the
Redis store fills one with the keys a batch needs, lets the engine run on it, and writes back only
what changed (the ``dirty_*`` and ``deleted_*`` keys). User and session records belong to one
partition; track counts are global (every partition's plays of the track, see ``tracks``).

Track counts move in *epochs* of event time (``EngineConfig.track_epoch_seconds``, a day): a play
reads the counts of every play resolved in an earlier epoch, none of its own epoch's. That is a
point in time every partition reaches whatever its batches: the worker applies its batches epoch
by epoch across its partitions and never passes the epoch of a record one of them still has
pending, so two runs of one replay, with any number of partitions, and training and ``simulate``
on one, read the same counts (``stream/worker/checkpoint.py``, ``scheduler.py``, ``stream/store.py``)."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

# user record: decayed counts, the ids of the user's open sessions, when the user bought premium
# (None: not in the events so far), decayed plays and skips while premium, decayed ads heard, the
# user's own history with the tracks they played last (``U_TRACKS``), and the session of an ad
# heard since the user's last play (None: none); on the user, not the session, so an ad before a
# session's first play makes no session record of its own (live and offline keep the same ones)
U_N, U_K, U_LIKES, U_TS, U_NM, U_KM, U_NO, U_KO, U_SESSION, U_BOUGHT, U_NP, U_KP, U_ADS, U_TRACKS, U_AD = range(15)
USER_FIELDS = 15
# U_TRACKS: track -> [resolved plays, skips, liked (0/1)], undecayed small ints (cached by Python,
# so an entry costs its list), the most recently touched last
UT_N, UT_K, UT_LIKED = range(3)
USER_TRACK_MEMORY = 32
"""Tracks a user record remembers. A bound, so an 18M-event replay's users and a live user's
Redis record stay small (a long-session user plays ~220 tracks a year; their repeats are mostly
among the recent ones); a track past it is as new to the user again."""
# session record
S_PLAYS, S_SKIPS, S_LAST, S_PENDING_TRACK, S_PENDING_BUCKET, S_PENDING_TS = range(6)
_ADDED_USER_FIELDS = (None, 0.0, 0.0, 0.0, None, None)  # U_BOUGHT .. U_AD; None for the dict: a fresh one each


def new_user(ts: float, session_id: int) -> list:
    return [0.0, 0.0, 0.0, ts, 0.0, 0.0, 0.0, 0.0, [session_id], None, 0.0, 0.0, 0.0, {}, None]


def new_session() -> list:
    return [0, 0, -1, None, -1, 0.0]


def upgrade_user(u: list) -> list:
    """A user record stored by an older version (9 fields and on) grows the fields added since;
    anything else is left as it is."""
    if 9 <= len(u) < USER_FIELDS:
        u.extend(_ADDED_USER_FIELDS[len(u) - 9:])
        u[U_TRACKS] = u[U_TRACKS] or {}
    return u


def touch_track(u: list, track_id: str) -> list:
    """The user's entry for ``track_id``, made most recent (the oldest forgotten past the bound)."""
    tracks = u[U_TRACKS]
    rec = tracks.pop(track_id, None)
    if rec is None:
        rec = [0, 0, 0]
        if len(tracks) >= USER_TRACK_MEMORY:
            del tracks[next(iter(tracks))]
    tracks[track_id] = rec
    return rec


# track record: cumulative counts of every play of the track, all partitions together
T_N, T_K, T_LIKES = range(3)


@dataclass
class State:
    users: dict[int, list] = field(default_factory=dict)
    sessions: dict[tuple[int, int], list] = field(default_factory=dict)
    tracks: dict[str, list] = field(default_factory=dict)
    """Track counts as the engine reads them: every play resolved before the current epoch (loaded,
    or read through from ``shared_tracks``)."""
    shared_tracks: dict[str, list] | None = None
    """Read-only global counts a track missing from ``tracks`` is read from (the simulation's
    snapshot of every shard's counts as of the epoch's start); None: ``tracks`` holds all there is."""
    track_delta: dict[str, list] | None = None
    """This batch's own additions to the track counts in the current epoch (what a partition
    commits); None: not kept (one owner of every count, which folds ``epoch_plays`` into
    ``tracks`` as epochs turn)."""
    track_deltas: list[tuple[int, dict[str, list]]] = field(default_factory=list)
    """This batch's additions in its earlier epochs, when it spans several: (epoch, additions)."""
    reread: "Callable[[int, int], None] | None" = None
    """A partition's way to move ``tracks`` on from the start of one epoch to a later one's, for
    a batch whose epoch turns (its own additions between them are in ``track_deltas``)."""
    epoch_seconds: float = 86400.0
    epoch: float = -math.inf
    """The current epoch (``floor(ts / epoch_seconds)`` of the newest event; never goes back)."""
    epoch_end: float = -math.inf
    """When the current epoch ends (event time)."""
    epoch_plays: dict[str, list] = field(default_factory=dict)
    """The one owner's additions in the current epoch, read from the next one on."""
    blobs: dict[str, object] = field(default_factory=dict)
    """Whole-value records owned by one writer (the warmer's per-shard tier state, pending
    predictions). Marked dirty by key in ``dirty_blobs``."""

    dirty_users: set[int] = field(default_factory=set)
    dirty_sessions: set[tuple[int, int]] = field(default_factory=set)
    deleted_sessions: set[tuple[int, int]] = field(default_factory=set)
    dirty_blobs: set[str] = field(default_factory=set)

    def clear_changes(self) -> None:
        self.dirty_users.clear()
        self.dirty_sessions.clear()
        self.deleted_sessions.clear()
        if self.track_delta is not None:
            self.track_delta.clear()
        self.track_deltas.clear()
        self.dirty_blobs.clear()

    def add_track(self, track_id: str, n: float, k: float, likes: float) -> None:
        """A resolved play (or a like): counted from the next epoch on."""
        delta = self.track_delta if self.track_delta is not None else self.epoch_plays
        d = delta.get(track_id)
        if d is None:
            delta[track_id] = [n, k, likes]
        else:
            d[T_N] += n
            d[T_K] += k
            d[T_LIKES] += likes

    def advance(self, ts: float) -> bool:
        """Move to the epoch of ``ts`` if it is later; the one owner then reads its last epoch's
        additions. True if the epoch turned."""
        if ts < self.epoch_end:
            return False
        epoch = self.epoch_of(ts)
        if self.track_delta is None:
            if self.epoch_plays:
                self._count(self.epoch_plays)
                self.epoch_plays = {}
        else:
            if self.track_delta:
                self.track_deltas.append((self.epoch, self.track_delta))
                self.track_delta = {}
            if self.reread is not None:
                self.reread(self.epoch, epoch)
        self.set_epoch(epoch)
        return True

    def epoch_of(self, ts: float) -> int:
        return math.floor(ts / self.epoch_seconds)

    def additions(self) -> list[tuple[float, dict[str, list]]]:
        """This batch's additions to the track counts, (epoch, additions) in ascending epochs."""
        return [*self.track_deltas, (self.epoch, self.track_delta)] if self.track_delta is not None else []

    def _count(self, additions: dict[str, list]) -> None:
        tracks, shared = self.tracks, self.shared_tracks
        for t, d in additions.items():
            rec = tracks.get(t)
            if rec is None:
                base = shared.get(t) if shared is not None else None
                rec = tracks[t] = list(base) if base is not None else [0.0, 0.0, 0.0]
            rec[T_N] += d[T_N]
            rec[T_K] += d[T_K]
            rec[T_LIKES] += d[T_LIKES]

    def set_epoch(self, epoch: float) -> None:
        """The epoch a batch is in (the worker's, which reads the counts as of its start)."""
        self.epoch = epoch
        self.epoch_end = (epoch + 1) * self.epoch_seconds if math.isfinite(epoch) else -math.inf

    def begin_round(self, shared: dict[str, list]) -> None:
        """Read track counts from ``shared`` (a snapshot of the global counts) from now on, and
        collect this shard's additions in ``track_delta`` for the caller to merge."""
        self.tracks.clear()
        self.shared_tracks = shared
        self.track_delta = {}


def add_counts(into: dict[str, list], delta: dict[str, list], weight: int = 1,
               only: "set[str] | dict | None" = None) -> None:
    """Add ``weight`` times track counts (track -> [plays, skips, likes]) into ``into``; with
    ``only``, of those tracks alone. (Indexes written as numbers, T_N, T_K, T_LIKES = 0, 1, 2: the
    plain sum is the worker's most frequent loop, 6% of it.)"""
    get = into.get
    if weight == 1 and only is None:
        for t, d in delta.items():
            rec = get(t)
            if rec is None:
                into[t] = [d[0], d[1], d[2]]
            else:
                rec[0] += d[0]
                rec[1] += d[1]
                rec[2] += d[2]
        return
    for t, d in delta.items():
        if only is not None and t not in only:
            continue
        rec = get(t)
        if rec is None:
            into[t] = [weight * d[0], weight * d[1], weight * d[2]]
        else:
            rec[0] += weight * d[0]
            rec[1] += weight * d[1]
            rec[2] += weight * d[2]
