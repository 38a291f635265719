"""The worker's partition runtime on the in-memory store: exactly-once effect, fencing, dead letters,
and the same figures as the simulation."""
import orjson
import pytest

from cache_warmer.policies import ThresholdPolicy
from cache_warmer.simulation import simulate
from cache_warmer.tiers import TierConfig
from models.artifacts import load
from models.features import EngineConfig
from models.replay import replay_order
from stream.cli import main
from stream.files import read_dataset
from stream.partition_runtime import OffsetGap, PartitionRuntime, summarize_store
from stream.stores.memory import MemoryStore


@pytest.fixture(scope="module")
def setup(small_long_data, tmp_path_factory):
    model = tmp_path_factory.mktemp("rt") / "m.joblib"
    assert main(["train", "--data", str(small_long_data), "--out", str(model), "--train-fraction", "0.5"]) == 0
    ds = read_dataset(small_long_data, progress=False)
    events = replay_order(ds.events)
    art = load(model)
    tiers = TierConfig.for_catalogue(ds.catalogue)
    sim = simulate(events, ds.catalogue, [art], tiers, [ThresholdPolicy("model", "model")],
                   count_from=float("-inf"), progress=False)["policies"]["model"]
    records = [(i, orjson.dumps(e.to_json())) for i, e in enumerate(events)]
    return ds, art, tiers, sim, records


def _runtime(store, ds, art, tiers):
    return PartitionRuntime(0, store, ds.catalogue, {"model": art.predict_full}, ThresholdPolicy("model", "model"),
                            tiers, EngineConfig(**art.engine_config))


def _figures(store, ds, tiers):
    return summarize_store(store, [0], ThresholdPolicy("model", "model"), tiers, ds.catalogue)


def _run(rt, records, batch=700):
    for i in range(0, len(records), batch):
        out = rt.process(records[i:i + batch])
        assert rt.commit(out)


def _assert_same(fig, sim):
    for key in ("predictions", "accuracy", "promotions", "full_play_hits", "wasted_promotions", "evictions"):
        assert fig[key] == sim[key], key


def test_runtime_equals_simulation(setup):
    ds, art, tiers, sim, records = setup
    store = MemoryStore()
    _run(_runtime(store, ds, art, tiers), records)
    fig = _figures(store, ds, tiers)
    # the replay's last sessions end with their session_end markers, so nothing stays pending
    _assert_same(fig, sim)
    assert fig["predictions"] > 10_000


def test_crash_and_redelivery_count_nothing_twice(setup):
    ds, art, tiers, sim, records = setup
    store = MemoryStore()
    rt = _runtime(store, ds, art, tiers)
    cut = len(records) // 3
    _run(rt, records[:cut])
    rt.process(records[cut:cut + 500])  # processed but never committed: the worker died here
    rt = _runtime(store, ds, art, tiers)  # a new worker loads from the store...
    assert rt.next_offset == cut
    _run(rt, records[cut - 300:])  # ...and Kafka redelivers from before the stored offset
    _assert_same(_figures(store, ds, tiers), sim)


def test_a_zombie_is_fenced_and_a_gap_is_refused(setup):
    ds, art, tiers, _, records = setup
    store = MemoryStore()
    a = _runtime(store, ds, art, tiers)
    _run(a, records[:1000])
    b = _runtime(store, ds, art, tiers)  # b took the partition over
    _run(b, records[1000:1500])
    out = a.process(records[1000:1200])  # a still thinks it owns it
    assert a.commit(out) is False and a.next_offset == 1500  # fenced and reloaded
    with pytest.raises(OffsetGap):
        b.process(records[1600:1700])


def test_bad_events_become_dead_letters_and_the_offset_moves(setup):
    ds, art, tiers, _, records = setup
    store = MemoryStore()
    rt = _runtime(store, ds, art, tiers)
    hostile = [b"{oops", b"[]", b'{"event_type": "PLAY"}', b"x" * 100_000, None,
               orjson.dumps({"session_id": 1, "timestamp": "2023-01-01T00:00:00", "user_id": "1; DROP", "track_id": None,
                             "event_type": "play"})]
    batch = [(i, v) for i, v in enumerate(hostile)] + [(len(hostile) + i, v) for i, (_, v) in enumerate(records[:100])]
    out = rt.process(batch)
    assert [r for _, r, _ in out.dead_letters] == ["bad_json", "not_an_event", "missing_user_id", "too_large",
                                                     "empty_message", "bad_user_id"]
    assert out.events == 100
    assert rt.commit(out) and store.offset(0) == len(batch)
    assert store.counters("rejected")["bad_json"] == 1
