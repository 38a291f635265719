"""The simulation's acceptance: policy ordering, no invented signal, one engine for all paths."""
import json

import pytest

from models.features import EngineConfig

from cache_warmer.policies import StaticPolicy
from cache_warmer.simulation import parse_threshold_range, simulate
from cache_warmer.tiers import FAST, MEDIUM, SLOW, Move, TierConfig, TierState
from models.artifacts import load
from models.evaluation import build_table, evaluate
from models.events import Catalogue, Storage
from models.replay import replay_order
from stream.cli import main
from stream.files import read_dataset


@pytest.fixture(scope="module")
def long_run(small_long_data, tmp_path_factory):
    """train and simulate as a user runs them, on 120 users of long sessions (~47k events)."""
    out = tmp_path_factory.mktemp("sim_long")
    model = out / "svc.joblib"
    assert main(["train", "--data", str(small_long_data), "--model", "linear_svc", "--out", str(model),
                 "--train-fraction", "0.7"]) == 0
    assert main(["simulate", "--data", str(small_long_data), "--model", str(model), "--json", str(out / "s.json"),
                 "--plot", str(out / "s.png")]) == 0
    return json.loads((out / "s.json").read_text()), model, out


def test_policies_order_on_long_sessions(long_run):
    result, _, out = long_run
    p = result["policies"]
    assert set(p) == {"static", "lru", "promote_all", "naive", "model", "oracle"}
    assert p["oracle"]["promotion_precision"] >= p["model"]["promotion_precision"] >= p["promote_all"]["promotion_precision"]
    assert p["model"]["full_play_hit_ratio"] > p["static"]["full_play_hit_ratio"]
    assert p["static"]["promotions"] == 0 and p["promote_all"]["promotions"] > 0
    assert p["model"]["accuracy"] > p["model"]["majority_accuracy"]
    assert "after the model's training window" in result["counted_window"]["rule"]
    assert (out / "s.png").stat().st_size > 10_000


def test_simulation_accuracy_equals_evaluate(long_run, small_long_data):
    """Same events, same model, same engine: the live accuracy is evaluate's test accuracy. And
    long sessions are learnable (the foundation's acceptance, on the same table)."""
    result, model, _ = long_run
    ds = read_dataset(small_long_data, progress=False)
    config = EngineConfig(**load(model).engine_config)  # the half-life training chose
    table = build_table(replay_order(ds.events), ds.catalogue, config, progress=False)
    ev = evaluate(table, ["linear_svc"], 0.7, progress=False)
    svc = ev["models"]["linear_svc"]
    assert svc["roc_auc"] >= 0.75
    assert svc["accuracy"] >= ev["majority_accuracy"] + 0.05
    assert 0.0 <= svc["brier"] < 0.25
    sim = result["policies"]["model"]
    assert sim["predictions"] == ev["split"]["test_plays"]
    assert sim["accuracy"] == pytest.approx(ev["models"]["linear_svc"]["accuracy"], abs=1e-9)
    # the pipeline rounds scores to 1e-9 (so BLAS's last bit cannot flip a decision on a threshold);
    # pairs that rounding ties move the AUC by about that much, so it is compared at 1e-6
    assert sim["roc_auc"] == pytest.approx(ev["models"]["linear_svc"]["roc_auc"], abs=1e-6)
    assert sim["majority_accuracy"] == pytest.approx(ev["majority_accuracy"], abs=1e-9)
    assert load(model).metrics["test"]["accuracy"] == pytest.approx(sim["accuracy"], abs=1e-9)


def test_short_sessions_model_is_no_better_than_promote_all(short_data, tmp_path):
    model = tmp_path / "m.joblib"
    assert main(["train", "--data", str(short_data), "--model", "linear_svc", "--out", str(model),
                 "--train-fraction", "0.7"]) == 0
    # the model predicts "full" for everyone here; a threshold just under its scores makes it promote
    ds = read_dataset(short_data, progress=False)
    events = replay_order(ds.events)
    art = load(model)
    result = simulate(events, ds.catalogue, [art], threshold=0.5, progress=False)
    p = result["policies"]
    assert p["model"]["promotions"] > 0
    assert abs(p["model"]["promotion_precision"] - p["promote_all"]["promotion_precision"]) <= 0.02


def test_batch_size_does_not_change_results(small_long_data, tmp_path):
    model = tmp_path / "m.joblib"
    assert main(["train", "--data", str(small_long_data), "--out", str(model), "--train-fraction", "0.5"]) == 0
    ds = read_dataset(small_long_data, progress=False)
    art = load(model)
    a = simulate(replay_order(read_dataset(small_long_data, progress=False).events), ds.catalogue, [art], batch_size=50_000, progress=False)
    b = simulate(replay_order(ds.events), ds.catalogue, [art], batch_size=313, progress=False)
    for name in a["policies"]:
        fa, fb = dict(a["policies"][name]), dict(b["policies"][name])
        assert fa.pop("promotions") == fb.pop("promotions")
        assert fa["full_play_hit_ratio"] == fb["full_play_hit_ratio"]
        assert fa.get("accuracy") == fb.get("accuracy")


def test_sweep_writes_json_and_png(small_long_data, tmp_path, capsys):
    model = tmp_path / "m.joblib"
    assert main(["train", "--data", str(small_long_data), "--out", str(model), "--train-fraction", "0.5"]) == 0
    assert main(["sweep", "--data", str(small_long_data), "--model", str(model), "--thresholds", "0.1:0.9:0.2",
                 "--json", str(tmp_path / "w.json"), "--plot", str(tmp_path / "w.png")]) == 0
    result = json.loads((tmp_path / "w.json").read_text())
    assert [r["threshold"] for r in result["thresholds"]] == pytest.approx([0.1, 0.3, 0.5, 0.7, 0.9])
    promos = [r["promotions"] for r in result["thresholds"]]
    assert promos == sorted(promos, reverse=True) and promos[0] > promos[-1]
    assert result["best"]["net_value"] == max(r["net_value"] for r in result["thresholds"])
    assert (tmp_path / "w.png").read_bytes()[:4] == b"\x89PNG"
    assert "best threshold" in capsys.readouterr().out


@pytest.mark.parametrize("spec", ["0.5:0.1:-1", "a:b:c", "1.5", ""])
def test_bad_thresholds_are_clear_errors(spec):
    with pytest.raises(ValueError):
        parse_threshold_range(spec)


def _tiers(fast=1, medium=2):
    cat = Catalogue(storage={"m" * 22: Storage("medium", 0.03)})
    return TierState(TierConfig(fast, medium, (0.01, 0.02, 0.1), 0.0, 1.0), cat)


def test_full_tier_evicts_least_recently_used_and_cascades():
    t = _tiers()
    moves: list[Move] = []
    assert t.tier_of("m" * 22) == MEDIUM
    t.move("a" * 22, MEDIUM, 10.0, "upcoming", moves)  # medium now full (2)
    t.touch("m" * 22, MEDIUM, 11.0)
    t.move("b" * 22, MEDIUM, 12.0, "upcoming", moves)  # evicts a (least recently used)
    assert t.tier_of("a" * 22) == SLOW and ("a" * 22, MEDIUM, SLOW, "evicted") in [(m.track, m.src, m.dst, m.reason) for m in moves]
    t.move("c" * 22, FAST, 13.0, "upcoming", moves)
    t.move("d" * 22, FAST, 14.0, "upcoming", moves)  # c goes down to medium, which evicts m
    assert t.tier_of("c" * 22) == MEDIUM and t.tier_of("d" * 22) == FAST and t.tier_of("m" * 22) == SLOW
    assert t.occupancy() == {"fast": 1, "medium": 2}


def test_costs_follow_moves_and_cold_tracks_are_demoted():
    t = _tiers()
    start = t.cost_per_day
    moves: list[Move] = []
    t.move("a" * 22, MEDIUM, 0.0, "upcoming", moves)  # unknown track: slow 0.01 from first sight, then medium 0.02
    assert t.cost_per_day == pytest.approx(start + 0.02)
    t.demote_cold(2 * 3600.0, moves)
    assert t.tier_of("a" * 22) == SLOW and t.tier_of("m" * 22) == SLOW
    assert t.cost_per_day == pytest.approx(start - 0.03 + 0.01 + 0.01)


def test_predictions_of_sessions_that_never_end_are_dropped_after_a_week():
    from cache_warmer.entries import PLAY, RESOLVED
    from cache_warmer.predictor import PredictionLedger
    from cache_warmer.warmer import CacheWarmer
    from models.features import Resolution

    ledger = PredictionLedger(["model"])
    ledger.open(1, 1, (0.9,), "A", 10.0)  # never resolved: no session_end, no return
    ledger.open(2, 5, (0.2,), "A", 6 * 86400.0)
    ledger.open(3, 1, (0.2,), "A", 8 * 86400.0)  # an hour later than the sweep's horizon
    assert list(ledger.pending) == [(2, 5), (3, 1)] and ledger.figures["model"].abandoned_predictions == 1
    ledger.resolve(Resolution(2, 5, 0, "b" * 22, 0, 8 * 86400.0 + 1))
    assert list(ledger.pending) == [(3, 1)] and ledger.figures["model"].tn == 1

    w = CacheWarmer(StaticPolicy("static"), _tiers())  # the warm stage's half: plays waiting for outcomes
    w.apply([(0, PLAY, 10.0, 1, 1, 0, "a" * 22, "A"), (1, PLAY, 6 * 86400.0, 2, 5, 0, "b" * 22, "A")])
    w.advance(8 * 86400.0)
    batch = w.end()  # the batch's effects carry it; the totals have it once the batch ends
    assert batch.figures.abandoned_plays == 1
    assert list(w.pending) == [(2, 5, 0)] and w.figures.abandoned_plays == 1
    w.apply([(2, RESOLVED, 8 * 86400.0 + 1, 2, 5, 0, "b" * 22, 1)])
    assert w.pending == {} and w.end().figures.full_plays == 1 and w.figures.full_plays == 1


def test_a_forked_helper_changes_no_figure(small_long_data, tmp_path):
    """The policies warmed by a forked helper (cache_warmer/warm_pool.py) give the figures one
    process gives, storage audit included, on three track shards."""
    from models.columns import replay_columns

    model = tmp_path / "m.joblib"
    assert main(["train", "--data", str(small_long_data), "--out", str(model), "--train-fraction", "0.5"]) == 0
    ds = read_dataset(small_long_data, progress=False)
    art = load(model)
    events = replay_columns(ds.columns)
    for partitions in (3,):
        one = simulate(events, ds.catalogue, [art], partitions=partitions, batch_size=4999, processes=1,
                       audit_storage=True, progress=False)
        two = simulate(events, ds.catalogue, [art], partitions=partitions, batch_size=4999, processes=2,
                       audit_storage=True, progress=False)
        for result in (one, two):
            result.pop("seconds"), result.pop("events_per_second")
        assert json.dumps(two, sort_keys=True, default=str) == json.dumps(one, sort_keys=True, default=str)  # NaN too
        assert one["policies"]["model"]["promotions"] > 0
