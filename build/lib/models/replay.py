"""Put an export's events in the order a live system would have seen them.

Exports are sorted by user then session, not by time. A replay orders them globally by timestamp
(stable, so same-instant events keep their order within a session), fills ``next_track_id`` from
the next play of the same session (what a client knows of its queue) and marks each session's end,
so the last play's outcome is resolved by an event instead of by peeking. Training, evaluation,
the simulation and the replay producer all use this one function."""
from __future__ import annotations

from operator import attrgetter

from .events import PLAY, SESSION_END, Event
from .gc_pause import paused_gc


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
        if len(session) > 1 and any(session[i].ts > session[i + 1].ts for i in range(len(session) - 1)):
            session.sort(key=attrgetter("ts"))
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
