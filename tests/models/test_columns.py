"""The columnar replay and labels give exactly what the object versions give."""
import random

import numpy as np

from models.columns import EventColumns, replay_columns, session_labels
from models.events import AD, LIKE, PLAY, SKIP, Event
from models.labels import label_session
from models.replay import replay_order


def _as_tuples(events):
    return [(e.ts, e.hour, e.user_id, e.session_id, e.kind, e.track_id, e.next_track_id) for e in events]


def _random_export(seed: int, users: int = 30) -> list[Event]:
    """Sessions kept together as the exports keep them, with out-of-order and tied times, skips
    of other tracks, repeated skips, and upcoming tracks some producers already sent."""
    rnd = random.Random(seed)
    tracks = [f"{i:022d}" for i in range(25)]
    out = []
    for user in range(users):
        t = rnd.uniform(0, 10_000)
        for session in range(rnd.randint(1, 4)):
            t += rnd.uniform(100, 5000)
            last = None
            for _ in range(rnd.randint(1, 12)):
                t += rnd.choice((0.0, 0.0, 1.0, 30.0, -5.0))  # ties and disorder
                r = rnd.random()
                if r < 0.5 or last is None:
                    last = rnd.choice(tracks)
                    nxt = rnd.choice(tracks) if rnd.random() < 0.1 else None
                    out.append(Event(t, int(t // 3600) % 24, user, session + 10 * user, PLAY, last, nxt))
                elif r < 0.8:
                    out.append(Event(t, 0, user, session + 10 * user, SKIP, last if rnd.random() < 0.8 else rnd.choice(tracks)))
                elif r < 0.9:
                    out.append(Event(t, 0, user, session + 10 * user, LIKE, last))
                else:
                    out.append(Event(t, 0, user, session + 10 * user, AD))
    return out


def _copy(events):
    return [Event(e.ts, e.hour, e.user_id, e.session_id, e.kind, e.track_id, e.next_track_id) for e in events]


def test_columns_read_back_as_the_events_they_hold():
    events = _random_export(1)
    cols = EventColumns.from_events(events)
    assert _as_tuples(cols) == _as_tuples(events)
    assert _as_tuples(cols[5:17]) == _as_tuples(events[5:17])
    assert _as_tuples([cols[-1]]) == _as_tuples([events[-1]])
    assert cols.plays == sum(e.kind == PLAY for e in events)
    assert cols.distinct_tracks() == len({e.track_id for e in events if e.track_id})


def test_replay_columns_equals_replay_order():
    for seed in range(8):
        events = _random_export(seed)
        for mark in (True, False):
            expected = _as_tuples(replay_order(_copy(events), mark_session_end=mark))
            got = _as_tuples(replay_columns(EventColumns.from_events(events), mark_session_end=mark))
            assert got == expected, (seed, mark)


def test_session_labels_equal_label_session():
    for seed in range(8):
        events = _random_export(seed)
        labels, orphans, start = [], 0, 0
        while start < len(events):
            end = start + 1
            while end < len(events) and (events[end].user_id, events[end].session_id) == (
                    events[start].user_id, events[start].session_id):
                end += 1
            got, o = label_session(events[start:end])
            labels += got
            orphans += o
            start = end
        lab, group, orph = session_labels(EventColumns.from_events(events))
        assert lab.tolist() == labels and orph == orphans, seed
        assert np.all(np.diff(group) >= 0)


def test_drain_gives_every_event_once_in_order_and_leaves_the_columns_empty():
    from models.events import PLAY, SKIP, Event

    events = [Event(float(i), i % 24, i % 5, i % 7, PLAY if i % 3 else SKIP, f"{i % 11:022d}") for i in range(50)]
    cols = EventColumns.from_events(events)
    assert list(cols.drain(chunk=7)) == list(EventColumns.from_events(events))
    assert len(cols) == 0 and cols.ts.dtype == np.float64
