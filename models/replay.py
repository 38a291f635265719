"""Put an export's events in the order a live system would have seen them.

Exports are sorted by user then session, not by time. A replay orders them globally by timestamp
(stable; within a session, same-instant events follow ``TIE_RANK``), fills ``next_track_id`` from
the next play of the same session (what a client knows of its queue) and marks each session's end,
so the last play's outcome is resolved by an event instead of by peeking. Training, evaluation,
the simulation and the replay producer all use this one function."""
from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter

import numpy as np

from .events import PLAY, SESSION_END, SKIP, Event
from .gc_pause import paused_gc


TIE_RANK = {SKIP: 0, PLAY: 2}
"""The rule of ties: a session's events stamped at one instant go skips first (a skip at the
instant of the next play ended the play before it), plays last (an ad or a purchase stamped
with a play came before it), everything else between in its written order."""


def _tie_key(e: Event) -> tuple[float, int]:
    return e.ts, TIE_RANK.get(e.kind, 1)


def replay_order(events: list[Event], mark_session_end: bool = True) -> list[Event]:
    """Events in global time order with ``next_track_id`` filled and session ends marked.

    ``events`` must hold each session's events contiguously and in order, as the exports do."""
    with paused_gc():
        return _replay_order(events, mark_session_end)


def _replay_order(events: list[Event], mark_session_end: bool) -> list[Event]:
    out: list[Event] = []
    append = out.append
    start = 0
    n = len(events)
    while start < n:
        first = events[start]
        key = (first.user_id, first.session_id)
        end = start + 1
        while end < n and events[end].session_id == first.session_id and events[end].user_id == first.user_id:
            end += 1
        session = events[start:end]
        if len(session) > 1 and any(_tie_key(session[i]) > _tie_key(session[i + 1]) for i in range(len(session) - 1)):
            session.sort(key=_tie_key)
        next_track = None
        for e in reversed(session):
            if e.kind == PLAY:
                if e.next_track_id is None and next_track is not None:
                    e.next_track_id = next_track
                next_track = e.track_id
        for e in session:
            append(e)
        if mark_session_end:
            last = session[-1]
            append(Event(last.ts, last.hour, key[0], key[1], SESSION_END))
        start = end
    out.sort(key=attrgetter("ts"))
    return out


def epoch_rounds(ts: "Sequence[float] | np.ndarray", epoch_seconds: float, size: int):
    """``(start, stop, the epoch turns after it)`` of rounds of a replay whose times are ``ts``:
    ``size`` events at most, none spanning two epochs of event time (``models/state.py``; an
    event stamped before its predecessor stays in its epoch, as a partition's never goes back)."""
    epochs = np.floor(np.asarray(ts, dtype=np.float64) / epoch_seconds)
    turns = np.flatnonzero(np.diff(np.maximum.accumulate(epochs)) > 0) + 1 if len(epochs) else []
    start = 0
    for end in [*map(int, turns), len(epochs)]:
        for lo in range(start, end, size):
            hi = min(lo + size, end)
            yield lo, hi, hi == end
        start = end
