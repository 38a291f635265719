"""The label: a play is *skipped* when a skip of the same track follows in the same session before
the next play; otherwise it is *played in full* (the last play of a session included).

The live definition is in FeatureEngine (outcomes resolve as events arrive); this offline version
over a finished session exists to check the two agree and to give the oracle its answers."""
from __future__ import annotations

from collections.abc import Iterable

from .events import PLAY, SESSION_END, SKIP, Event

FULL = 1
SKIPPED = 0


def label_session(events: Iterable[Event]) -> tuple[list[int], int]:
    """Labels of the plays of one session in order, and the number of orphan skips."""
    labels: list[int] = []
    tracks: list[str | None] = []
    pending = False
    orphans = 0
    for e in events:
        if e.kind == PLAY:
            if pending:
                labels[-1] = FULL
            labels.append(FULL)
            tracks.append(e.track_id)
            pending = True
        elif e.kind == SKIP:
            if pending and tracks[-1] == e.track_id:
                labels[-1] = SKIPPED
                pending = False
            else:
                orphans += 1
        elif e.kind == SESSION_END:
            pending = False
    return labels, orphans
