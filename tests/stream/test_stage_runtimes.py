"""Both stages' partition runtimes on the in-memory store: the same figures as the simulation,
exactly-once effect across a predict crash (the warm stage drops re-sent entries), fencing, gaps,
and dead letters in each stage."""
import orjson
import pytest

from cache_warmer.policies import ThresholdPolicy
from cache_warmer.simulation import simulate
from cache_warmer.tiers import TierConfig
from models.artifacts import load
from models.replay import replay_order
from stream.bootstrap import build_worker
from stream.cli import main
from stream.worker.stages.entry_codec import encode
from stream.files import read_dataset
from stream.cli.jobs import live_figures
from stream.worker.stages.partition import OffsetGap
from stream.settings import Settings
from stream.stores.memory import MemoryStore
from stream.worker.in_memory import list_sinks

SETTINGS = Settings(partitions=1, warm_partitions=1)


@pytest.fixture(scope="module")
def setup(small_long_data, tmp_path_factory):
    model = tmp_path_factory.mktemp("rt") / "m.joblib"
    assert main(["train", "--data", str(small_long_data), "--out", str(model), "--train-fraction", "0.5"]) == 0
    ds = read_dataset(small_long_data, progress=False)
    events = replay_order(ds.events)
    art = load(model)
    sim = simulate(events, ds.catalogue, [art], TierConfig.for_catalogue(ds.catalogue), [ThresholdPolicy("model", "model")],
                   count_from=float("-inf"), progress=False)["policies"]["model"]
    records = [(i, orjson.dumps(e.to_json())) for i, e in enumerate(events)]
    return ds, art, sim, records


class Bus:
    """One predict and one warm partition and the entries topic between them, as lists."""

    def __init__(self, ds, art, store=None):
        self.store = store or MemoryStore()
        self.worker = build_worker(SETTINGS, store=self.store, catalogue=ds.catalogue, artifact=art, sinks=list_sinks())
        self.predict = self.worker.predict_runtime(0)
        self.warm = self.worker.warm_runtime(0)
        self.topic: list[tuple[int, bytes]] = []

    def send(self, records, commit=True):
        """A predict batch: its entries reach the topic; then (unless it crashed) it commits."""
        out = self.predict.process(records)
        self.topic += [(len(self.topic), value) for sink, _, value, _ in out.publish if sink == "entries"]
        assert not commit or self.predict.commit(out)
        return out

    def drain(self):
        out = self.warm.process(self.topic[self.warm.next_offset:])
        assert self.warm.commit(out)
        return out

    def run(self, records, batch=700):
        for i in range(0, len(records), batch):
            self.send(records[i:i + batch])
            self.drain()

    def figures(self, ds):
        return live_figures(SETTINGS, self.store, ds.catalogue)


def _assert_same(fig, sim):
    for key in ("predictions", "accuracy", "promotions", "full_play_hits", "wasted_promotions", "evictions"):
        assert fig[key] == sim[key], key


def test_the_two_stages_equal_the_simulation(setup):
    ds, art, sim, records = setup
    bus = Bus(ds, art)
    bus.run(records)
    fig = bus.figures(ds)
    # the replay's last sessions end with their session_end markers, so nothing stays pending
    _assert_same(fig, sim)
    assert fig["predictions"] > 10_000 and fig["warm_caught_up"]


def test_a_predict_crash_re_sends_entries_and_the_warm_stage_drops_them(setup):
    ds, art, sim, records = setup
    bus = Bus(ds, art)
    cut = len(records) // 3
    bus.run(records[:cut])
    bus.send(records[cut:cut + 500], commit=False)  # published, never committed: the worker died here
    bus.drain()
    bus.predict = bus.worker.predict_runtime(0)  # a new worker loads from the store...
    assert bus.predict.next_offset == cut
    out = bus.send(records[cut - 300:cut + 800])  # ...and Kafka redelivers from before the stored offset
    assert out.skipped_duplicates == 300
    dropped = bus.drain()
    assert dropped.skipped_duplicates > 0  # the entries of offsets cut..cut+499 came twice
    assert cut + 500 <= bus.warm.received[0] <= cut + 799
    bus.run(records[cut + 800:])
    _assert_same(bus.figures(ds), sim)


def test_a_zombie_is_fenced_and_a_gap_is_refused(setup):
    ds, art, _, records = setup
    store = MemoryStore()
    a = Bus(ds, art, store)
    a.run(records[:1000])
    b = Bus(ds, art, store)  # b took the partitions over
    b.topic = a.topic
    b.run(records[1000:1500])
    out = a.predict.process(records[1000:1200])  # a still thinks it owns them
    assert a.predict.commit(out) is False and a.predict.next_offset == 1500  # fenced and reloaded
    with pytest.raises(OffsetGap):
        b.predict.process(records[1600:1700])
    stale = a.warm.process(a.topic[a.warm.next_offset:])
    assert stale.events > 0 and a.warm.commit(stale) is False and a.warm.next_offset == b.warm.next_offset


def test_bad_events_become_dead_letters_and_the_offset_moves(setup):
    ds, art, _, records = setup
    bus = Bus(ds, art)
    hostile = [b"{oops", b"[]", b'{"event_type": "PLAY"}', b"x" * 100_000, None,
               orjson.dumps({"session_id": 1, "timestamp": "2023-01-01T00:00:00", "user_id": "1; DROP", "track_id": None,
                             "event_type": "play"})]
    batch = [(i, v) for i, v in enumerate(hostile)] + [(len(hostile) + i, v) for i, (_, v) in enumerate(records[:100])]
    out = bus.send(batch)
    assert [r for _, r, _ in out.dead_letters] == ["bad_json", "not_an_event", "missing_user_id", "too_large",
                                                     "empty_message", "bad_user_id"]
    assert out.events == 100
    assert bus.store.offset(0) == len(batch)
    assert bus.store.counters("rejected")["bad_json"] == 1


def test_bad_entries_messages_become_dead_letters_in_the_warm_stage(setup):
    ds, art, _, records = setup
    bus = Bus(ds, art)
    bus.send(records[:200])
    good = len(bus.topic)
    bus.topic += [(good, b"{oops"), (good + 1, orjson.dumps({"v": 9, "src": 0, "e": []})),
                  (good + 2, orjson.dumps({"v": 1, "src": 0, "e": [[5, 0, 1.0]]})),
                  (good + 3, encode(0, 1.0, [(3, 2, 1.0, 1, 1, 0, "t", 1), (2, 2, 1.0, 1, 1, 0, "t", 1)]))]
    out = bus.drain()
    assert [r for _, r, _ in out.dead_letters] == ["bad_json", "unknown_entries_version", "bad_entries", "bad_entries"]
    assert bus.warm.next_offset == good + 4
    assert bus.store.counters("rejected")["entries_bad_entries"] == 2
