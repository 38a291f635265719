"""What the predict stage tells the warm stage: small tuples, one per fact a cache needs.

The predict stage is keyed by user (a user's session is one partition's business); the warm stage
by track (a track has one placement, so one owner). Each entry is about one track and goes to
that track's owner:

    (seq, PLAY, ts, user, session, play_no, track, variant)       the track starts playing
    (seq, UPCOMING, ts, track, variant, scores)                    it is played next; ``scores``
                                                                   are P(full), one per column
    (seq, RESOLVED, ts, user, session, play_no, track, label)      the play's outcome is known

``seq`` orders and identifies an entry's source: the event's offset in its sessions partition
(live), or its index in the replay (simulation). Entries of one event share it and keep the
order they were made in: resolutions first, then the play, then the upcoming track."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from operator import itemgetter

PLAY, UPCOMING, RESOLVED = 0, 1, 2
KIND_NAMES = ("play", "upcoming", "resolved")
TRACK_AT = (6, 3, 6)
"""Where each kind keeps its track."""

by_seq = itemgetter(0)


def track_of(entry: tuple) -> str:
    return entry[TRACK_AT[entry[1]]]


def route(entries: Iterable[tuple], shard_of: Callable[[str], int], shards: int) -> list[list[tuple]]:
    """Entries by the shard owning their track, each shard's in the order given."""
    out: list[list[tuple]] = [[] for _ in range(shards)]
    if shards == 1:
        out[0].extend(entries)
        return out
    at = TRACK_AT
    for entry in entries:
        out[shard_of(entry[at[entry[1]]])].append(entry)
    return out
