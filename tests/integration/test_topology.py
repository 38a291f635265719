"""Issue 11's acceptance on real Tansu and Redis: four sessions partitions (predict, keyed by user)
and four entries partitions (warm, keyed by track) on a generated set of 1,000 users.

- A "storage" consumer applies every command of pozytywka.cache-commands in topic order to one
  placement: no command moves a track that is not where the command says, and at the end the
  storage holds exactly what the warm stage's partitions hold. Since the warm stage's placement
  changes only by the commands it publishes, agreeing on every command's source tier means the
  storage and the warm stage agreed at every play.
- The live figures are `simulate`'s with the same four-and-four topology, exactly: the predict
  stage's batches never cross an epoch of the track counts, and the warm stage merges its four
  sources by event time, as the simulation's replay order does.
- `simulate` with 1 and 16 partitions on the same set: the cache figures do not depend on it."""
from __future__ import annotations

import orjson
import pytest
from kafka import KafkaConsumer

from cache_warmer.tiers import TIER_OF, SLOW
from models.artifacts import load
from models.replay import replay_order
from stream.cli import main
from stream.files import read_dataset
from stream.cli.jobs import live_figures, simulate_as_worker
from stream.kafka_io import track_partition_of
from stream.producer import replay
from stream.synthetic import generate
from stream.cli.services import stop_process

from tests.integration.conftest import make_live

pytestmark = pytest.mark.integration
USERS = 1000
EVENTS = 100_000
"""A time prefix of the set's replay (all of its users play in it): the whole set takes this
machine's single worker two minutes more than the suite can spend."""


@pytest.fixture(scope="module")
def big_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("topology")
    generate(out / "data", users=USERS, seed=5, profile="long", progress=False)
    ds = read_dataset(out / "data", progress=False)
    events = replay_order(ds.events)[:EVENTS]
    assert len({e.user_id for e in events}) >= USERS * 0.95
    (out / "prefix").mkdir()
    with open(out / "prefix" / "sessions.jsonl", "wb") as f:
        f.writelines(orjson.dumps(e.to_json()) + b"\n" for e in events)
    for name in ("users.jsonl", "tracks.jsonl", "artists.jsonl", "track_storage.jsonl"):
        (out / "prefix" / name).write_bytes((out / "data" / name).read_bytes())
    assert main(["train", "--data", str(out / "prefix"), "--out", str(out / "m.joblib"), "--train-fraction", "0.5"]) == 0
    ds = read_dataset(out / "prefix", progress=False)
    return out, ds, replay_order(ds.events), load(out / "m.joblib")


def _simulate(big_data, settings, n):
    _, ds, events, art = big_data
    return simulate_as_worker(events, ds.catalogue, art, settings, partitions=n)


@pytest.fixture(scope="module")
def four_by_four(servers, big_data, tmp_path_factory):
    kafka, redis = servers
    out, ds, events, _ = big_data
    live = make_live(kafka.port, redis.port, (out, ds, events, None), tmp_path_factory.mktemp("4x4"),
                     SKIPCACHE_PARTITIONS="4", SKIPCACHE_WARM_PARTITIONS="4", SKIPCACHE_BATCH_SIZE="1000",
                     SKIPCACHE_DATA=str(out / "prefix"))
    # every record on the broker before the worker reads: exactness is promised for what the broker
    # holds, however unevenly faust fetches it. A record still in a producer's buffer cannot be
    # known of; the stage waits EPOCH_IDLE_SECONDS for it (a unit test), which a loaded machine's
    # producer can outlast (stop 31's CI: one prediction in 53,516 differed)
    replay(events, live.settings.kafka_bootstrap, live.settings.topic_sessions, progress=False)
    worker, _ = live.start_worker()
    try:
        live.wait_applied(len(events), workers=[worker], timeout=240)
        fig = live_figures(live.settings, live.store(), ds.catalogue)
    finally:
        stop_process(worker, 20)
    return live, fig


def _commands(settings) -> list[dict]:
    consumer = KafkaConsumer(settings.topic_commands, bootstrap_servers=settings.kafka_bootstrap,
                             auto_offset_reset="earliest", consumer_timeout_ms=3000)
    try:
        return [orjson.loads(m.value) for m in consumer]
    finally:
        consumer.close()


def test_a_storage_applying_the_commands_in_order_always_agrees_with_the_warm_stage(four_by_four, big_data):
    live, fig = four_by_four
    _, ds, _, _ = big_data
    storage = {t: TIER_OF[s.storage_class] for t, s in ds.catalogue.storage.items()
               if TIER_OF[s.storage_class] != SLOW}
    commands = _commands(live.settings)
    assert len(commands) >= fig["promotions"] > 1000
    for c in commands:
        assert storage.get(c["track"], SLOW) == TIER_OF[c["from"]], c  # never moves a track from where it is not
        if TIER_OF[c["to"]] == SLOW:
            storage.pop(c["track"], None)
        else:
            storage[c["track"]] = TIER_OF[c["to"]]
    held = {}
    warm = live.store().stage("warm")
    for q in range(live.settings.warm_partitions):
        tiers = orjson.loads(warm.blob(q))["tiers"]
        for name in ("medium", "fast"):
            for track, _ in tiers[name]:
                assert track_partition_of(track, live.settings.warm_partitions) == q  # each track has one owner
                held[track] = TIER_OF[name]
    assert storage == held


def test_four_and_four_partitions_give_simulates_figures(four_by_four, big_data):
    """Exactly: the batches cut at the track counts' epochs and the warm stage's merge in event
    time leave nothing to the timing of fetches (with no entry applied late)."""
    live, fig = four_by_four
    expected = _simulate(big_data, live.settings, 4)
    said = [line for line in (live.workdir / "w.log").read_text(errors="replace").splitlines()
            if "read late" in line or "[WARNING]" in line or "[ERROR]" in line]  # why, if they differ
    assert fig["warm_late_entries"] == 0, said
    for key in ("plays", "predictions", "accuracy", "full_play_hits", "hit_ratio", "promotions", "wasted_promotions"):
        assert fig[key] == expected[key], (key, fig[key], expected[key], said)


def test_simulate_cache_figures_do_not_depend_on_the_partitions(four_by_four, big_data):
    live, _ = four_by_four
    one, sixteen = _simulate(big_data, live.settings, 1), _simulate(big_data, live.settings, 16)
    assert abs(one["full_play_hit_ratio"] - sixteen["full_play_hit_ratio"]) < 0.005
    assert abs(one["promotion_precision"] - sixteen["promotion_precision"]) < 0.01
