"""Shadow placements in the warm stage on the in-memory store: each shadow's figures are what the
simulation gives at its threshold, the live placement's are unchanged by them, they command
nothing, they survive a reload, and the advice weighs them."""
import orjson
import pytest

from cache_warmer.advice import MIN_HOURS, advise, block_bootstrap
from cache_warmer.policies import ThresholdPolicy
from cache_warmer.shadows import parse_shadow_thresholds
from cache_warmer.simulation import simulate
from cache_warmer.tiers import TierConfig
from models.artifacts import load
from models.replay import replay_order
from stream.bootstrap import build_worker
from stream.cli import main
from stream.cli.jobs import live_figures
from stream.files import read_dataset
from stream.settings import Settings
from stream.stores.memory import MemoryStore
from stream.worker.advice import threshold_advice
from stream.worker.in_memory import list_sinks
from stream.worker.metrics import WorkerMetrics

SHADOWS = (0.3, 0.6, 0.7)
SETTINGS = Settings(partitions=1, warm_partitions=1, shadow_thresholds=",".join(map(str, SHADOWS)))
COMPARED = ("plays", "full_play_hits", "hits_by_tier", "promotions", "promotions_to_fast", "wasted_promotions",
            "useful_promotions", "evictions", "demotions_cold", "storage_cost_per_day", "transfer_cost")


@pytest.fixture(scope="module")
def setup(small_long_data, tmp_path_factory):
    model = tmp_path_factory.mktemp("sh") / "m.joblib"
    assert main(["train", "--data", str(small_long_data), "--out", str(model), "--train-fraction", "0.5"]) == 0
    ds = read_dataset(small_long_data, progress=False)
    events = replay_order(ds.events)
    art = load(model)
    policies = [ThresholdPolicy("model", "model", 0.5, 0.95)] + [
        ThresholdPolicy(f"t{t}", "model", t, max(t, 0.95)) for t in SHADOWS]
    sim = simulate(events, ds.catalogue, [art], TierConfig.for_catalogue(ds.catalogue), policies,
                   count_from=float("-inf"), progress=False)["policies"]
    records = [(i, orjson.dumps(e.to_json())) for i, e in enumerate(events)]
    return ds, art, sim, records


def _run(ds, art, records, settings, store=None, topic=None, start=0, stop=None, batch=700):
    """One predict and one warm partition, the entries topic (``topic``) a list between them."""
    store = store or MemoryStore()
    topic = [] if topic is None else topic
    worker = build_worker(settings, store=store, catalogue=ds.catalogue, artifact=art, sinks=list_sinks())
    predict, warm = worker.predict_runtime(0), worker.warm_runtime(0)
    commands, metrics = [], WorkerMetrics()
    metrics.set_objective(settings.hit_value, settings.transfer_cost, settings.shadows)
    records = records[start:stop]
    for i in range(0, len(records), batch):
        out = predict.process(records[i:i + batch])
        topic += [(len(topic), value) for sink, _, value, _ in out.publish if sink == "entries"]
        assert predict.commit(out)
        w = warm.process(topic[warm.next_offset:])
        commands += [value for sink, _, value, _ in w.publish if sink == "commands"]
        metrics.record_batch(w, {"A": "m"})
        assert warm.commit(w)
    return store, commands, metrics, topic


def test_each_shadow_gives_the_simulations_figures_at_its_threshold(setup):
    ds, art, sim, records = setup
    store, commands, metrics, _ = _run(ds, art, records, SETTINGS)
    fig = live_figures(SETTINGS, store, ds.catalogue)
    assert set(fig["shadows"]) == {"0.3", "0.6", "0.7"}
    for t in SHADOWS:
        shadow, expected = fig["shadows"][f"{t:g}"], sim[f"t{t}"]
        for key in COMPARED:
            assert shadow[key] == pytest.approx(expected[key], rel=1e-9), (t, key)
    promotions = [fig["shadows"][f"{t:g}"]["promotions"] for t in SHADOWS]
    assert promotions[0] > promotions[1] > promotions[2]  # a lower threshold promotes more
    # the live placement is the one the simulation runs at 0.5, shadows or not
    for key in COMPARED:
        assert fig[key] == pytest.approx(sim["model"][key], rel=1e-9), key
    # commands: the live placement's moves and nothing else (a shadow's would add thousands)
    moves = fig["promotions"] + fig["evictions"] + fig["demotions_cold"]
    assert len(commands) == moves
    # metrics: the shadow series carry the threshold label and the figures
    text = metrics.render().decode()
    assert f'skipcache_shadow_promotions_total{{threshold="0.3"}} {float(promotions[0])}' in text


def test_shadows_resume_after_a_reload_and_a_new_one_starts_empty(setup):
    ds, art, sim, records = setup
    half = len(records) // 2
    store, _, _, topic = _run(ds, art, records, SETTINGS, stop=half)
    wider = Settings(partitions=1, warm_partitions=1, shadow_thresholds="0.3,0.6,0.7,0.4")
    _run(ds, art, records, wider, store=store, topic=topic, start=half)  # a new process on the same store, one more shadow
    fig = live_figures(wider, store, ds.catalogue)
    for t in SHADOWS:
        assert fig["shadows"][f"{t:g}"]["promotions"] == sim[f"t{t}"]["promotions"], t
    assert 0 < fig["shadows"]["0.4"]["plays"] < fig["shadows"]["0.3"]["plays"]  # counted from when it was added


def test_advice_names_the_better_threshold_only_beyond_its_noise():
    live = {h: [10, 5, 0.01] for h in range(48)}
    better = {h: [12, 5, 0.01] for h in range(48)}  # two more full-play hits every hour, same costs
    noisy = {h: [10 + (4 if h % 2 else -4), 5, 0.01] for h in range(48)}  # as good on average, noisier
    out = advise(live, {0.4: better, 0.6: noisy}, 0.5, hit_value=0.002, transfer_cost=0.0005, window_hours=24)
    assert out["verdict"] == "change" and out["best"] == 0.4
    row = {r["threshold"]: r for r in out["thresholds"]}
    assert row[0.4]["over_live"] == pytest.approx(24 * 2 * 0.002)
    assert row[0.4]["real"] and not row[0.6]["real"]
    out = advise(live, {0.6: noisy}, 0.5, hit_value=0.002, transfer_cost=0.0005, window_hours=24)
    assert out["verdict"] == "keep" and out["best"] == 0.5
    short = advise({0: [1, 0, 0.0]}, {0.4: {0: [2, 0, 0.0]}}, 0.5, 0.002, 0.0005)
    assert short["verdict"] == "too_little_time" and MIN_HOURS > 1
    assert advise({}, {}, 0.5, 0.002, 0.0005)["verdict"] == "no_evidence"


def test_the_bootstrap_interval_covers_a_mean_of_zero_noise_and_excludes_a_shift():
    import numpy as np

    rng = np.random.default_rng(1)
    noise = rng.normal(0, 1, 200)
    lo, hi = block_bootstrap(noise - noise.mean())
    assert lo < 0 < hi
    lo, hi = block_bootstrap(noise - noise.mean() + 0.5)
    assert lo > 0


def test_the_advice_from_the_store_weighs_what_the_partitions_committed(setup):
    ds, art, sim, records = setup
    times = [e.ts for e in replay_order(ds.events)]
    early = next((i for i, t in enumerate(times) if t >= times[0] + 13 * 86400), len(records))
    assert early > 2000
    store, _, _, _ = _run(ds, art, records, SETTINGS, stop=early)  # within the hours a warmer keeps
    out = threshold_advice(SETTINGS, store, window_hours=24 * 14)
    assert out["shadows"] == list(SHADOWS) and out["window"]["hours_counted"] >= MIN_HOURS
    fig = live_figures(SETTINGS, store, ds.catalogue)
    for row in out["thresholds"]:  # the whole replay is in the window: the totals are the figures'
        assert row["full_play_hits"] == fig["shadows"][f"{row['threshold']:g}"]["full_play_hits"]
    assert out["live"]["full_play_hits"] == fig["full_play_hits"]


@pytest.mark.parametrize("spec", ["0.3,x", "1.5", "-0.1", ",".join(str(i / 10) for i in range(10))])
def test_bad_shadow_thresholds_are_a_clear_error(spec):
    with pytest.raises(ValueError, match="SKIPCACHE_SHADOW_THRESHOLDS"):
        parse_shadow_thresholds(spec)
    assert parse_shadow_thresholds(" 0.7, 0.3,0.3 ") == (0.3, 0.7) and parse_shadow_thresholds("") == ()
