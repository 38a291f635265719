"""The composition root builds the worker from parts passed in: here a memory store, a catalogue
and a model in memory, no Redis and no files, and the worker gives the simulation's figures."""
from dataclasses import replace

import pytest

from cache_warmer.policies import ThresholdPolicy
from cache_warmer.simulation import simulate
from models.artifacts import load
from stream.bootstrap import build_store, build_worker
from stream.cli.jobs import live_figures, load_replay, train_model
from stream.settings import Settings
from stream.stores.memory import MemoryStore
from stream.worker.in_memory import list_sinks, replay_in_memory


def test_the_worker_is_built_from_the_parts_handed_in(small_long_data, tmp_path):
    train_model(small_long_data, tmp_path / "m.joblib", train_fraction=0.5)
    artifact = load(tmp_path / "m.joblib")
    ds, events = load_replay(small_long_data, progress=False)
    settings = Settings(partitions=1, warm_partitions=1, model_path="/nonexistent", redis_url="redis://127.0.0.1:1/0")
    store = MemoryStore()
    worker = build_worker(settings, store=store, catalogue=ds.catalogue, artifact=artifact, sinks=list_sinks())
    assert worker.store is store  # nothing was built from the settings' (unusable) paths and URL
    assert set(worker.stages) == {"predict", "warm"}
    replay_in_memory(worker, events, 900)
    fig = live_figures(settings, store, ds.catalogue)
    base = worker.tier_config
    expected = simulate(events, ds.catalogue, [artifact], base, [ThresholdPolicy("model", "model")],
                        count_from=float("-inf"), progress=False)["policies"]["model"]
    for key in ("predictions", "accuracy", "promotions", "full_play_hits", "wasted_promotions"):
        assert fig[key] == expected[key], key
    assert fig["offsets"]["predict"] == {0: len(events)} and fig["warm_caught_up"]
    only_warm = build_worker(replace(settings, stage="warm"), store=store, catalogue=ds.catalogue, artifact=artifact,
                             sinks=list_sinks())
    assert set(only_warm.stages) == {"warm"}
    with pytest.raises(ValueError, match="SKIPCACHE_STAGE"):
        build_worker(replace(settings, stage="cache"), store=store, catalogue=ds.catalogue, artifact=artifact)


def test_store_backends_are_chosen_by_url_scheme():
    assert isinstance(build_store(Settings(redis_url="memory://")), MemoryStore)
    assert type(build_store(Settings(redis_url="redis://127.0.0.1:6379/0"))).__name__ == "RedisStore"
    with pytest.raises(ValueError, match="scheme must be one of"):
        build_store(Settings(redis_url="mongodb://x"))
