"""A live worker tells producers what they send otherwise than the contract asks: events keyed
to another user's partition (counted by reason, in `status` and /healthz, with a log line that
names the fix) and plays without an upcoming track."""
from __future__ import annotations

import orjson
import pytest
import urllib.request
from kafka import KafkaConsumer, TopicPartition

from models.events import PLAY
from stream.cli.jobs import live_figures
from stream.kafka_io import partition_of
from stream.producer import replay

from tests.integration.conftest import make_live

pytestmark = pytest.mark.integration


def _landed(settings) -> list[tuple[int, int]]:
    """(partition, user) of every record on the sessions topic."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, consumer_timeout_ms=3000,
                             enable_auto_commit=False)
    consumer.assign([TopicPartition(settings.topic_sessions, p) for p in range(settings.partitions)])
    consumer.seek_to_beginning()
    out = [(m.partition, orjson.loads(m.value)["user_id"]) for m in consumer]
    consumer.close()
    return out


@pytest.mark.parametrize("key", ["none"])  # keyed by user, on 4 partitions: tests/integration/test_quickstart.py
def test_misrouted_events_and_plays_without_upcoming_are_counted(servers, live_data, tmp_path, key):
    kafka, redis = servers
    live = make_live(kafka.port, redis.port, live_data, tmp_path, SKIPCACHE_PARTITIONS="2")
    _, _, events, _ = live_data
    events = events[:20_000]
    worker, port = live.start_worker()
    try:
        replay(events, live.settings.kafka_bootstrap, live.settings.topic_sessions, progress=False, key=key)
        live.wait_applied(len(events), workers=[worker])
        landed = _landed(live.settings)
        assert len(landed) == len(events)
        wrong = sum(1 for p, user in landed if partition_of(user, 2) != p)
        fig = live_figures(live.settings)
        contract = fig["contract"]
        assert contract.get("misrouted:wrong_partition", 0) == wrong
        assert (wrong == 0) == (key == "user")
        without = sum(1 for e in events if e.kind == PLAY and e.next_track_id is None)
        assert 0 < without < sum(1 for e in events if e.kind == PLAY)
        assert contract["plays_without_upcoming"] == without
        health = orjson.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).read())
        assert health["producers"].get("misrouted:wrong_partition", 0) == wrong
        assert health["status"] == "degraded" and health["misrouted_events_last_minute"] == wrong
        log = (live.workdir / "w.log").read_text()
        assert ("key each event by its user id" in log) == (key != "user")
    finally:
        worker.terminate()
        worker.wait(20)


def test_without_session_ends_or_upcoming_tracks_the_gap_rule_resolves_what_simulate_resolves(live, live_data):
    """A producer that sends neither `session_end` events nor `next_track_id`: the live figures
    are `simulate`'s on the same events, every play is counted as without upcoming, and every
    play is resolved but those still within the session gap when the stream ends."""
    from dataclasses import replace as with_

    from models.events import SESSION_END
    from tests.integration.conftest import COMPARED, expected_figures

    out, ds, events, art = live_data
    bare = [with_(e, next_track_id=None) for e in events if e.kind != SESSION_END]
    worker, _ = live.start_worker()
    try:
        replay(bare, live.settings.kafka_bootstrap, live.settings.topic_sessions, progress=False)
        live.wait_applied(len(bare), workers=[worker])
        fig = live_figures(live.settings)
    finally:
        worker.terminate()
        worker.wait(20)
    # the stream stops with the plays of its last half hour open: simulate leaves them open too
    # (by default it ends every session where an export ends)
    expected = expected_figures((out, ds, bare, art), live.settings, end_sessions=False)
    for key in COMPARED:
        assert fig[key] == expected[key], key
    plays = [e for e in bare if e.kind == PLAY]
    assert fig["contract"]["plays_without_upcoming"] == len(plays)
    last = bare[-1].ts
    tail = {(e.user_id, e.session_id) for e in plays if e.ts >= last - 1800}  # sessions the stream ended inside the gap

    def pending_at_end(gap: float) -> int:
        from models.features import EngineConfig, FeatureEngine
        from models.state import S_PENDING_TRACK

        engine = FeatureEngine(ds.catalogue, EngineConfig(**{**art.engine_config, "session_gap_seconds": gap}))
        for e in bare:
            engine.observe(e)
        return sum(1 for s in engine.state.sessions.values() if s[S_PENDING_TRACK] is not None)

    # every play resolved but those the stream ended within the gap of; without the rule, every
    # user's last session would wait for a next one that never comes
    assert fig["predictions"] == len(plays) - pending_at_end(1800)
    assert pending_at_end(1800) <= len(tail) and pending_at_end(1e12) >= 30  # 45 of the 80 users here


def test_skips_sent_before_their_plays_are_matched_as_simulate_matches_them(live, live_data):
    """A client that buffered plays: 300 skips sent just before their play (held until the
    partition's clock passes them by a minute: the play comes next, whenever it was stamped). Each is matched when
    the play comes (counted as skip_before_play), and the figures are `simulate`'s on the same
    order of events."""
    from models.events import SKIP
    from tests.integration.conftest import COMPARED, expected_figures

    out, ds, events, art = live_data
    events = list(events)
    moved = 0
    i = 1
    while i < len(events) and moved < 300:
        e = events[i]
        if e.kind == SKIP:  # its play is the user's latest play of the session: move the skip before it
            j = max(k for k in range(max(0, i - 200), i) if events[k].kind == PLAY
                    and (events[k].user_id, events[k].session_id) == (e.user_id, e.session_id))
            if events[j].track_id == e.track_id:
                events.insert(j, events.pop(i))
                moved += 1
                i += 40
        i += 1
    worker, _ = live.start_worker()
    try:
        replay(events, live.settings.kafka_bootstrap, live.settings.topic_sessions, progress=False)
        live.wait_applied(len(events), workers=[worker])
        fig = live_figures(live.settings)
    finally:
        worker.terminate()
        worker.wait(20)
    from models.features import EngineConfig, FeatureEngine

    engine = FeatureEngine(ds.catalogue, EngineConfig(**art.engine_config))
    for e in events:
        engine.observe(e)
    matched = engine.repaired["skip_before_play"]  # a few skip the same track the session played just before
    assert moved == 300 and matched >= 290
    assert fig["contract"]["skip_before_play"] == matched
    expected = expected_figures((out, ds, events, art), live.settings)
    for key in COMPARED:
        assert fig[key] == expected[key], key
