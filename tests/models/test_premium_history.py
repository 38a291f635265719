"""Issue 22: premium as of the play (from ``buy_premium`` events), the user's memory chosen on
validation, the user's own history with a track, and the rule of ties in time."""
import numpy as np
import orjson
import pytest

from models.columns import KIND_CODE, PLAY_CODE, EventColumns, replay_columns
from models.evaluation import HALF_LIVES, build_table, choose_half_life, time_split
from models.events import AD, BUY_PREMIUM, LIKE, PLAY, SKIP, Catalogue, Event, User
from models.features import EngineConfig, FeatureEngine
from models.labels import SKIPPED
from models.replay import replay_order
from models.state import USER_TRACK_MEMORY, U_TRACKS
from stream.cli.jobs import load_replay, train_model
from stream.files import read_catalogue

A, B, C = "a" * 22, "b" * 22, "c" * 22


def ev(ts, kind, track=None, user=1, session=1):
    return Event(float(ts), 0, user, session, kind, track)


@pytest.fixture(scope="module")
def premium_rows(small_long_data):
    ds, events = load_replay(small_long_data, progress=False)
    table = build_table(events, ds.catalogue, progress=False)
    plays = events.kind == PLAY_CODE
    bought = {}
    for u, t, k in zip(events.user.tolist(), events.ts.tolist(), events.kind.tolist()):
        if k == KIND_CODE[BUY_PREMIUM] and u not in bought:
            bought[u] = t
    return ds, table.X[:, table.feature_names.index("premium")], events.user[plays], events.ts[plays], bought


def test_a_buyers_plays_are_premium_only_after_the_purchase(premium_rows):
    ds, premium, users, ts, bought = premium_rows
    buyers = [u for u in bought if ds.catalogue.users[u].premium]
    assert len(buyers) >= 10, "the long profile has buyers midway"
    for u in buyers:
        mine = users == u
        before, after = premium[mine & (ts <= bought[u])], premium[mine & (ts > bought[u])]
        assert len(before) and len(after)
        assert (before == 0).all() and (after == 1).all()


def test_the_users_flag_decides_only_for_users_who_never_buy(premium_rows):
    ds, premium, users, ts, bought = premium_rows
    flagged = [u for u, x in ds.catalogue.users.items() if x.premium and u not in bought]
    never = [u for u, x in ds.catalogue.users.items() if x.premium is False and u not in bought]
    assert flagged and never
    assert (premium[np.isin(users, flagged)] == 1).all()  # premium from the start
    assert (premium[np.isin(users, never)] == 0).all()
    assert ds.catalogue.buyers == frozenset(bought)


def test_the_worker_reads_the_same_buyers_and_learns_the_purchase_from_the_event(small_long_data, premium_rows):
    """The worker's catalogue (read without the plays) knows the same buyers; its engine, with its
    user records through the store's encoding (orjson) after every event, gives the same rows."""
    ds, *_ = premium_rows
    worker_cat = read_catalogue(small_long_data).catalogue
    assert worker_cat.buyers == ds.catalogue.buyers
    _, events = load_replay(small_long_data, progress=False)
    user = next(u for u in sorted(ds.catalogue.buyers))
    mine = [e for e in events if e.user_id == user]
    offline, live = FeatureEngine(ds.catalogue), FeatureEngine(worker_cat)
    for e in mine:
        _, row, _, _ = offline.observe(e)
        live.state.users = {k: orjson.loads(orjson.dumps(v)) for k, v in live.state.users.items()}
        _, row_live, _, _ = live.observe(e)
        assert row == row_live


def test_a_purchase_at_the_plays_instant_is_not_before_it():
    cat = Catalogue(users={1: User(1, None, True)}, buyers=frozenset({1}))
    engine = FeatureEngine(cat)
    col = engine.feature_names.index("premium")
    _, first, _, _ = engine.observe(ev(0, PLAY, A))
    engine.observe(ev(100, BUY_PREMIUM))
    _, same, _, _ = engine.observe(ev(100, PLAY, B))
    _, later, _, _ = engine.observe(ev(300, PLAY, C))
    X = engine.matrix([first, same, later])  # observe's rows are gathered; the matrix derives them
    assert (X[0, col], X[1, col], X[2, col]) == (0.0, 0.0, 1.0)


def test_ties_a_skip_stamped_with_the_next_play_goes_first_and_a_play_never_sees_its_own_outcome():
    # written play B before the skip of A, all at one instant; then B's own skip at that instant
    written = [ev(0, PLAY, A), ev(50, PLAY, B), ev(50, SKIP, A), ev(50, AD), ev(50, SKIP, B), ev(300, PLAY, C)]
    for ordered in (replay_order(list(written), mark_session_end=False),
                    list(replay_columns(EventColumns.from_events(written), mark_session_end=False))):
        assert [(e.ts, e.kind, e.track_id) for e in ordered][:5] == [
            (0, PLAY, A), (50, SKIP, A), (50, SKIP, B), (50, AD, None), (50, PLAY, B)]
        engine = FeatureEngine()
        names = engine.feature_names
        labels, rows = {}, {}
        for e in ordered:
            resolved, row, _, _ = engine.observe(e)
            labels.update({r.track_id: r.label for r in resolved})
            if row is not None:
                rows[e.track_id] = engine.matrix([row])[0].tolist()
        assert labels[A] == SKIPPED and labels[B] == SKIPPED  # B's: a skip at its own instant, after its scoring
        b = dict(zip(names, rows[B]))
        assert b["sess_last_skipped"] == 1.0 and b["ad_before"] == 1.0  # what ended A, and the ad before B
        assert b["user_log_plays"] == pytest.approx(np.log1p(1.0))  # A only: B's own outcome unseen
        assert dict(zip(names, rows[C]))["user_log_plays"] == pytest.approx(np.log1p(2.0), rel=1e-3)


def test_the_users_history_with_a_track_and_the_tracks_rate_among_others():
    engine = FeatureEngine(config=EngineConfig(track_epoch_seconds=30_000.0))
    names = engine.feature_names
    for i, (user, session) in enumerate(((1, 1), (1, 2), (2, 3))):
        t0 = i * 10_000
        engine.observe(ev(t0, PLAY, A, user, session))
        engine.observe(ev(t0 + 5, SKIP, A, user, session))
        engine.observe(ev(t0 + 6, LIKE, B, user, session))
    assert A not in engine.state.tracks and A in engine.state.epoch_plays  # the epoch's plays count from the next epoch on
    assert engine.state.advance(40_000.0)
    row = dict(zip(names, engine.features(1, A, None, 40_000.0, 0)))
    assert row["user_track_log_plays"] == pytest.approx(np.log1p(2))
    assert row["user_track_skip_rate"] > row["user_skip_rate"] * 0.99  # two of two skipped, smoothed
    assert row["user_track_liked"] == 0.0 and dict(zip(names, engine.features(1, B, None, 40_000.0, 0)))["user_track_liked"] == 1.0
    m, p = engine.config.track_smoothing, engine.config.prior_skip_rate
    assert row["track_others_skip_rate"] == pytest.approx((1 + m * p) / (1 + m))  # user 2's one skip
    assert dict(zip(names, engine.features(3, A, None, 40_000.0, 0)))["track_others_skip_rate"] == pytest.approx((3 + m * p) / (3 + m))


def test_a_user_remembers_a_bounded_number_of_tracks():
    engine = FeatureEngine()
    for i in range(USER_TRACK_MEMORY + 10):
        track = f"{i:022d}"
        engine.observe(ev(i * 400, PLAY, track))
    engine.observe(ev(10**6, SKIP, "x" * 22))  # ends nothing; the last play stays pending
    tracks = engine.state.users[1][U_TRACKS]
    assert len(tracks) == USER_TRACK_MEMORY and f"{0:022d}" not in tracks  # the oldest went first


def test_the_user_half_life_is_chosen_inside_the_training_window_and_recorded(small_long_data, tmp_path):
    ds, events = load_replay(small_long_data, progress=False)
    config, scores = choose_half_life(events, ds.catalogue, 0.7)
    assert set(scores) == {str(h) for h in HALF_LIVES}
    assert config.user_half_life_days == max(HALF_LIVES, key=lambda h: scores[str(h)])
    # only the training window is read: changing every event after it changes nothing
    _, cutoff = time_split(events.ts[events.kind == PLAY_CODE], 0.7)
    later = events.take(np.arange(len(events)))
    after = later.ts > cutoff
    assert after.any()
    later.track[after] = later.track[0]
    later.user[after & (later.kind != PLAY_CODE)] = 1
    assert choose_half_life(later, ds.catalogue, 0.7) == (config, scores)
    artifact = train_model(small_long_data, tmp_path / "m.joblib", train_fraction=0.7)
    assert artifact.engine_config["user_half_life_days"] == config.user_half_life_days
    assert artifact.metrics["half_life_validation_auc"] == scores


def test_no_decay_is_a_config_the_engine_takes():
    rates = {}
    for half_life in (None, 14.0):
        engine = FeatureEngine(config=EngineConfig(user_half_life_days=half_life))
        engine.observe(ev(0, PLAY, A))
        engine.observe(ev(5, SKIP, A))
        rate = engine.feature_names.index("user_skip_rate")
        rates[half_life] = (engine.features(1, B, None, 10.0, 0)[rate], engine.features(1, B, None, 365 * 86400.0, 0)[rate])
    assert rates[None][0] == rates[None][1]  # a year later the user is remembered as they were
    assert rates[14.0][1] < rates[14.0][0]  # with 14 days, the skip is all but forgotten


def test_a_user_record_stored_by_the_version_before_reads_as_one_of_today():
    """The Redis store upgrades each user record it fetches (``upgrade_user``): a 9-field record
    of the version before gives the features of today's record with the same counts."""
    from models.state import upgrade_user

    engine = FeatureEngine()
    engine.observe(ev(0, PLAY, A))
    engine.observe(ev(5, SKIP, A))
    today = engine.state.users[1]
    old = orjson.loads(orjson.dumps(today[:9]))
    upgraded = upgrade_user(old)
    assert len(upgraded) == len(today) and upgraded[U_TRACKS] == {}
    fresh = FeatureEngine()
    fresh.state.users[1] = upgraded
    row_old, row_today = fresh.features(1, B, None, 100.0, 0), engine.features(1, B, None, 100.0, 0)
    assert row_old == row_today  # B: not in the user's track memory either way
    fresh.observe(ev(200, PLAY, C, session=2))  # and the engine updates it like any other
    assert fresh.state.users[1][U_TRACKS] == {} and fresh.state.users[1][0] == today[0]
