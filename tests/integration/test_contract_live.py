"""A live worker tells producers what they send otherwise than the contract asks, and still gives
true figures: events keyed to another user's partition are repartitioned to where the user's
state lives (counted by reason, in `status` and /healthz, with a log line that names the fix),
plays without an upcoming track are counted."""
from __future__ import annotations

import orjson
import pytest
import urllib.request
from kafka import KafkaConsumer, TopicPartition

from models.events import PLAY
from stream.cli.jobs import live_figures
from stream.kafka_io import partition_of
from stream.producer import replay
from stream.cli.services import stop_process

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


def _keyed_run(servers, live_data, workdir, events, key: str) -> dict:
    """The events sent keyed by ``key`` to a 2-partition sessions topic (the topic full before
    the worker starts), applied by one worker: its figures, where the records landed, /healthz
    and its log."""
    kafka, redis = servers
    workdir.mkdir()
    live = make_live(kafka.port, redis.port, live_data, workdir, SKIPCACHE_PARTITIONS="2")
    live.create_topics()
    replay(events, live.settings.kafka_bootstrap, live.settings.topic_sessions, progress=False, key=key)
    worker, port = live.start_worker()
    try:
        live.wait_applied(len(events), workers=[worker])
        fig = live_figures(live.settings)
        health = orjson.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).read())
    finally:
        stop_process(worker, 20)
    return {"fig": fig, "landed": _landed(live.settings), "health": health, "log": (workdir / "w.log").read_text()}


def test_events_keyed_by_session_or_not_at_all_give_the_figures_of_events_keyed_by_user(servers, live_data,
                                                                                          tmp_path):
    """The same export sent (a) keyed by user, (b) with no key, (c) keyed by session: the
    partition each event lands on forwards the events of users living elsewhere through the
    repartition topic, and the figures are (a)'s. The events are those of the users of sessions
    partition 0: keyed by user they all land there, so (a) is one partition's replay and its
    figures do not depend on batch timing; (b) and (c) spread them over both partitions."""
    _, _, events, _ = live_data
    mine = [e for e in events if partition_of(e.user_id, 2) == 0][:10_000]
    from concurrent.futures import ThreadPoolExecutor

    keys = ("user", "none", "session")
    with ThreadPoolExecutor(len(keys)) as pool:  # three workers of their own, side by side
        runs = dict(zip(keys, pool.map(lambda key: _keyed_run(servers, live_data, tmp_path / key, mine, key), keys)))
    a = runs["user"]["fig"]
    assert a["predictions"] > 2_500 and a["promotions"] > 0
    for key, run in runs.items():
        fig = run["fig"]
        wrong = sum(1 for p, user in run["landed"] if partition_of(user, 2) != p)
        assert len(run["landed"]) == len(mine)
        assert (wrong == 0) == (key == "user") and (key == "user" or wrong > len(mine) // 4), (key, wrong)
        contract = fig["contract"]
        assert contract.get("misrouted:wrong_partition", 0) == wrong, key
        assert contract.get("repartitioned", 0) == wrong, key  # each forwarded event applied once
        assert contract.get("repartitioned_late", 0) == 0, key
        for figure in ("predictions", "accuracy", "majority_accuracy", "plays", "full_play_hits", "promotions",
                       "wasted_promotions", "evictions", "hit_ratio"):
            assert fig.get(figure) == a.get(figure), (key, figure, fig.get(figure), a.get(figure))
        assert fig["events_by_type"] == a["events_by_type"], key
        health = run["health"]
        assert health["producers"].get("misrouted:wrong_partition", 0) == wrong, key
        assert (health["status"] == "degraded") == (key != "user"), (key, health["status"])
        assert ("key each event by its user id" in run["log"]) == (key != "user"), key


def test_plays_without_upcoming_are_counted(live, live_data):
    _, _, events, _ = live_data
    events = events[:20_000]
    worker, _ = live.start_worker()
    try:
        replay(events, live.settings.kafka_bootstrap, live.settings.topic_sessions, progress=False)
        live.wait_applied(len(events), workers=[worker])
        contract = live_figures(live.settings)["contract"]
    finally:
        stop_process(worker, 20)
    without = sum(1 for e in events if e.kind == PLAY and e.next_track_id is None)
    assert 0 < without < sum(1 for e in events if e.kind == PLAY)
    assert contract["plays_without_upcoming"] == without
    assert "misrouted:wrong_partition" not in contract


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
        stop_process(worker, 20)
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
        stop_process(worker, 20)
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
