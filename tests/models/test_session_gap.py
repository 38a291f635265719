"""Live traffic carries no session ends: a play with no event of its session for the session
gap (event time, as far as the engine's partition has come) was played in full, and its session
has ended. The same rule in training, the simulation and the worker (one engine)."""
from models.events import PLAY, SKIP, Event
from models.features import EngineConfig, FeatureEngine
from models.labels import FULL, SKIPPED
from models.state import U_SESSION
from models.state import S_PENDING_TRACK, S_PENDING_TS

A, B = "m92ShLjHYUKj2mUeydGsdp", "Rh1XQPU9JNI5V4uzQTgAwZ"


def _play(ts, user, session, track=A):
    return Event(ts, 0, user, session, PLAY, track)


def _run(engine, events):
    out = []
    for e in events:
        out += engine.observe(e)[0]
    return out


def test_a_play_with_nothing_after_it_for_the_gap_resolves_as_full_at_its_start_plus_the_gap():
    engine = FeatureEngine(config=EngineConfig(session_gap_seconds=1800))
    resolved = _run(engine, [_play(0, 1, 10), _play(100, 2, 20), _play(1799, 2, 20, B)])
    assert resolved == [r for r in resolved if r.user_id == 2]  # not yet: 1799 s is within the gap
    resolved = _run(engine, [_play(1801, 2, 20)])  # another user's event moves the clock past it
    ended = [r for r in resolved if r.user_id == 1]
    assert [(r.session_id, r.track_id, r.label, r.ts) for r in ended] == [(10, A, FULL, 1800)]
    assert (1, 10) not in engine.state.sessions and 10 not in engine.state.users[1][U_SESSION]
    # a skip after the session ended finds no play: held for its play a minute, then an orphan
    _run(engine, [Event(1900, 0, 1, 10, SKIP, A), _play(1961, 2, 20)])
    assert engine.rejections.counts["orphan_skip"] == 1


def test_a_skip_within_the_gap_resolves_the_play_and_the_gap_rule_leaves_it_alone():
    engine = FeatureEngine(config=EngineConfig(session_gap_seconds=1800))
    resolved = _run(engine, [_play(0, 1, 10), Event(60, 0, 1, 10, SKIP, A), _play(5000, 2, 20)])
    assert [(r.user_id, r.label, r.ts) for r in resolved] == [(1, SKIPPED, 60)]


def test_after_a_restart_the_pending_plays_come_under_the_rule_again():
    first = FeatureEngine(config=EngineConfig(session_gap_seconds=1800))
    _run(first, [_play(0, 1, 10)])
    second = FeatureEngine(config=EngineConfig(session_gap_seconds=1800), state=first.state)
    second.watch({(1, 10): ("scores", "A", True, 0.0)})  # the prediction ledger's pending entry
    assert second.due(1801) == [(1, 10)] and second.due(1799) == []
    resolved = _run(second, [_play(1801, 2, 20)])
    assert [(r.user_id, r.label, r.ts) for r in resolved] == [(1, FULL, 1800)]


# ---- a skip that arrives before its play --------------------------------------------------------
def _skip(ts, user, session, track=A):
    return Event(ts, 0, user, session, SKIP, track)


def test_a_skip_that_arrives_before_its_play_resolves_it_when_the_play_comes():
    engine = FeatureEngine(config=EngineConfig(early_skip_seconds=60))
    assert _run(engine, [_skip(100, 1, 10)]) == []  # held, not an orphan yet
    resolved = _run(engine, [_play(40, 1, 10)])
    assert [(r.label, r.ts, r.track_id) for r in resolved] == [(SKIPPED, 100, A)]
    assert engine.repaired == {"skip_before_play": 1} and not engine.rejections.counts


def test_past_the_window_or_stamped_before_its_play_a_held_skip_is_an_orphan():
    engine = FeatureEngine(config=EngineConfig(early_skip_seconds=60))
    _run(engine, [_skip(100, 1, 10), _play(161, 2, 20)])  # the clock passes the window
    assert engine.rejections.counts["orphan_skip"] == 1
    assert _run(engine, [_play(50, 1, 10)]) == []  # too late: pending, as any play
    _run(engine, [_skip(300, 3, 30, B), _play(301, 3, 30, B)])  # the play is stamped after the skip
    assert engine.rejections.counts["orphan_skip"] == 2 and not engine.repaired


def test_held_skips_are_kept_with_the_state_and_counted_when_the_data_ends():
    engine = FeatureEngine(config=EngineConfig(early_skip_seconds=60))
    _run(engine, [_skip(100, 1, 10)])
    again = FeatureEngine(config=EngineConfig(early_skip_seconds=60), state=engine.state)
    again.load_held(engine.held_state())
    assert [(r.label, r.ts) for r in _run(again, [_play(90, 1, 10)])] == [(SKIPPED, 100)]
    _run(again, [_skip(500, 4, 40)])
    again.flush(1000)
    assert again.rejections.counts["orphan_skip"] == 1


def test_the_predictor_opens_the_play_before_its_early_skip_resolves_it():
    from cache_warmer.predictor import Predictor

    engine = FeatureEngine(config=EngineConfig(early_skip_seconds=60))
    predictor = Predictor(engine, {"m": lambda X: [0.9] * len(X)}, ["m"])
    predictor.process([_skip(100, 1, 10), _play(40, 1, 10)], [0, 1])
    f = predictor.ledger.figures["m"]
    assert (f.tp, f.fp, f.tn, f.fn) == (0, 1, 0, 0)  # predicted full (0.9), was skipped: counted


def test_the_heap_holds_a_session_once_and_due_finds_every_session_the_rule_will_end():
    import random

    rnd = random.Random(3)
    engine = FeatureEngine(config=EngineConfig(session_gap_seconds=1800))
    ts = 0.0
    for _ in range(3000):
        ts += rnd.expovariate(1 / 20)
        user = rnd.randrange(40)
        engine.observe(_play(ts, user, user * 10 + rnd.randrange(3), rnd.choice((A, B))))
        assert len(engine._gap_heap) == len(engine._gap_keys) <= len(engine.state.sessions) + 40 * 3
        until = ts + rnd.uniform(0, 3600)
        pending = {k for k, s in engine.state.sessions.items()
                   if s[S_PENDING_TRACK] is not None and s[S_PENDING_TS] < until - 1800}
        assert pending <= set(engine.due(until))
