"""The feature engine must never see the future and must agree with the offline label."""
import math

import numpy as np
import pytest

from models.evaluation import build_table
from models.events import PLAY, SESSION_END, SKIP, Event
from models.features import (G_HAS_TRACK, G_HAS_USER, G_OWN_K, G_OWN_N, G_SK, G_SN, G_TK, G_TN, G_UK, G_UN,
                             EngineConfig, FeatureEngine, unpack_row)
from models.labels import FULL, SKIPPED, label_session
from models.replay import replay_order
from stream.files import read_dataset

A, B, C = "a" * 22, "b" * 22, "c" * 22


def ev(ts, kind, track=None, user=1, session=1):
    return Event(float(ts), 0, user, session, kind, track)


def test_outcomes_resolve_only_when_they_arrive():
    engine = FeatureEngine()
    resolved, row, _, _ = engine.observe(ev(0, PLAY, A))
    assert resolved == [] and row is not None
    resolved, *_ = engine.observe(ev(10, SKIP, A))
    assert [(r.track_id, r.label) for r in resolved] == [(A, SKIPPED)]
    engine.observe(ev(15, PLAY, B))
    resolved, *_ = engine.observe(ev(200, PLAY, C))  # next play: B was played in full
    assert [(r.track_id, r.label) for r in resolved] == [(B, FULL)]
    resolved, *_ = engine.observe(ev(400, SESSION_END))
    assert [(r.track_id, r.label) for r in resolved] == [(C, FULL)]


def test_orphan_skips_are_counted_not_applied():
    engine = FeatureEngine()
    engine.observe(ev(0, PLAY, A))
    resolved, *_ = engine.observe(ev(5, SKIP, B))
    assert resolved == []  # held a minute for a play of B that may come late
    resolved, *_ = engine.observe(ev(66, PLAY, C))
    assert [r.track_id for r in resolved] == [A] and engine.rejections.counts["orphan_skip"] == 1


def test_a_new_session_of_the_user_ends_the_old_one_once_it_is_idle():
    engine = FeatureEngine()
    engine.observe(ev(0, PLAY, A, session=1))
    resolved, *_ = engine.observe(ev(1000, PLAY, B, session=2))
    assert resolved == []  # sessions may overlap: a skip of A could still come
    resolved, *_ = engine.observe(ev(3 * 3600, PLAY, C, session=3))
    assert sorted((r.session_id, r.label) for r in resolved) == [(1, FULL), (2, FULL)]


def test_skip_rates_move_with_resolved_outcomes_only():
    engine = FeatureEngine()
    names = engine.feature_names
    user_rate = names.index("user_skip_rate")
    before = engine.features(1, A, None, 0.0, 0)[user_rate]
    engine.observe(ev(0, PLAY, A))
    pending = engine.features(1, A, None, 1.0, 0)[user_rate]
    assert pending == before  # the pending play's outcome is unknown yet
    engine.observe(ev(10, SKIP, A))
    assert engine.features(1, A, None, 11.0, 0)[user_rate] > before


def test_engine_labels_equal_offline_labels(small_long_data):
    ds = read_dataset(small_long_data, progress=False)
    events = replay_order(ds.events)
    table = build_table(events, ds.catalogue, progress=False)
    # offline: label each session from the file order, then order plays by time like the table
    offline = []
    start = 0
    evs = ds.events
    while start < len(evs):
        end = start + 1
        while end < len(evs) and (evs[end].user_id, evs[end].session_id) == (evs[start].user_id, evs[start].session_id):
            end += 1
        labels, _ = label_session(evs[start:end])
        plays = [e for e in evs[start:end] if e.kind == PLAY]
        offline += [(p.ts, p.user_id, lab) for p, lab in zip(plays, labels)]
        start = end
    offline.sort(key=lambda t: t[0])
    assert len(offline) == len(table.y)
    assert sorted(lab for *_, lab in offline) == sorted(table.y.tolist())
    assert np.mean(table.y) == np.mean([lab for *_, lab in offline])


def test_features_are_point_in_time(small_long_data):
    """Cutting the future off must not change any earlier play's features."""
    ds = read_dataset(small_long_data, progress=False)
    events = replay_order(ds.events)
    full = build_table(events, ds.catalogue, progress=False)
    cut = len(events) // 2
    prefix = build_table(events[:cut], ds.catalogue, progress=False)
    n = len(prefix.y)
    assert n > 1000
    np.testing.assert_array_equal(prefix.X, full.X[:n])


def test_a_rows_features_do_not_depend_on_the_batch_it_is_derived_in(small_long_data):
    """``matrix`` derives a batch's rows at once, the live worker's batches are cut otherwise than
    the simulation's: a row's features must be the same bits alone, in any batch, and as the
    scalar formulas give them (``log1p`` comes gathered: numpy's vectorised one differs in the
    last bit by the element's position in the array)."""
    ds = read_dataset(small_long_data, progress=False)
    engine = FeatureEngine(ds.catalogue, EngineConfig(user_half_life_days=14.0))
    rows = []
    for e in replay_order(ds.events):
        _, row, up, _ = engine.observe(e)
        rows += [r for r in (row, up) if r is not None]
    assert len(rows) > 1000
    whole = engine.matrix(rows)
    alone = np.vstack([engine.matrix([r]) for r in rows[:300]])
    np.testing.assert_array_equal(whole[:300], alone)
    for cut in (7, 17, 1001):  # batches of other lengths and offsets
        np.testing.assert_array_equal(np.vstack([engine.matrix(rows[i:i + cut]) for i in range(0, len(rows), cut)]), whole)
    names = engine.feature_names
    cfg, p = engine.config, engine.config.prior_skip_rate
    m, mt = cfg.user_smoothing, cfg.track_smoothing
    for g, derived in zip(map(unpack_row, rows), whole):  # the scalar formulas, row by row (README "Features")
        x = dict(zip(names, derived))
        user_rate = (g[G_UK] + m * p) / (g[G_UN] + m) if g[G_HAS_USER] else p
        assert x["user_skip_rate"] == user_rate and x["user_log_plays"] == math.log1p(g[G_UN])
        assert x["user_state_skip_rate"] == ((g[G_SK] + m * user_rate) / (g[G_SN] + m) if g[G_HAS_USER] else p)
        assert x["track_log_plays"] == math.log1p(g[G_TN])
        assert x["track_others_skip_rate"] == ((max(g[G_TK] - g[G_OWN_K], 0.0) + mt * p)
                                               / (max(g[G_TN] - g[G_OWN_N], 0.0) + mt) if g[G_HAS_TRACK] else p)


def test_replay_marks_session_ends_and_fills_next_track():
    events = [ev(5, PLAY, A, session=2), ev(10, PLAY, B, session=2),
              ev(0, PLAY, C, user=2, session=9)]
    out = replay_order(events)
    assert [e.kind for e in out] == [PLAY, SESSION_END, PLAY, PLAY, SESSION_END]
    assert out[2].next_track_id == B and out[3].next_track_id is None


@pytest.mark.parametrize("field,value", [("user_smoothing", 0.0), ("track_smoothing", -1.0),
                                         ("session_smoothing", float("nan")), ("prior_skip_rate", 1.5),
                                         ("track_epoch_seconds", float("inf")), ("early_skip_seconds", -5.0),
                                         ("user_half_life_days", -14.0), ("user_track_smoothing", "2")])
def test_an_engine_config_that_would_give_nan_or_nonsense_features_is_refused_by_name(field, value):
    with pytest.raises(ValueError, match=field):
        EngineConfig(**{field: value})


def test_the_default_engine_config_and_no_decay_are_accepted():
    assert EngineConfig().user_smoothing > 0
    assert EngineConfig(user_half_life_days=None, early_skip_seconds=0.0).user_half_life_days is None
