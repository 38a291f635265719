"""The mutable state the feature engine and the cache warmer read and write, with change tracking.

It is deliberately plain dicts of small lists: the in-memory store keeps one State forever; the
Redis store fills one with the keys a batch needs, lets the engine run on it, and writes back only
what changed (the ``dirty_*`` and ``deleted_*`` keys). Every record belongs to one partition."""
from __future__ import annotations

from dataclasses import dataclass, field

# user record: decayed counts, then the ids of the user's open sessions
U_N, U_K, U_LIKES, U_TS, U_NM, U_KM, U_NO, U_KO, U_SESSION = range(9)
# session record
S_PLAYS, S_SKIPS, S_LAST, S_PENDING_TRACK, S_PENDING_BUCKET, S_PENDING_TS = range(6)
# track record: cumulative counts of the partition's plays of the track
T_N, T_K, T_LIKES = range(3)


@dataclass
class State:
    users: dict[int, list] = field(default_factory=dict)
    sessions: dict[tuple[int, int], list] = field(default_factory=dict)
    tracks: dict[str, list] = field(default_factory=dict)
    blobs: dict[str, object] = field(default_factory=dict)
    """Whole-value records owned by one writer (the warmer's per-shard tier state, pending
    predictions). Marked dirty by key in ``dirty_blobs``."""

    dirty_users: set[int] = field(default_factory=set)
    dirty_sessions: set[tuple[int, int]] = field(default_factory=set)
    deleted_sessions: set[tuple[int, int]] = field(default_factory=set)
    dirty_tracks: set[str] = field(default_factory=set)
    dirty_blobs: set[str] = field(default_factory=set)

    def clear_changes(self) -> None:
        self.dirty_users.clear()
        self.dirty_sessions.clear()
        self.deleted_sessions.clear()
        self.dirty_tracks.clear()
        self.dirty_blobs.clear()

    def add_track(self, track_id: str, n: float, k: float, likes: float) -> None:
        rec = self.tracks.get(track_id)
        if rec is None:
            self.tracks[track_id] = [n, k, likes]
        else:
            rec[T_N] += n
            rec[T_K] += k
            rec[T_LIKES] += likes
        self.dirty_tracks.add(track_id)
