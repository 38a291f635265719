"""Both stages' partition runtimes on the in-memory store: the same figures as the simulation,
exactly-once effect across a predict crash (the warm stage drops re-sent entries), fencing, gaps,
and dead letters in each stage."""
import math
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
from stream.store import StateMoved
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
        for sink, _, value, _ in out.publish:
            if sink == "entries":
                self.topic.append((len(self.topic), value))
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


def test_a_partition_keeps_its_stored_track_counts_as_the_store_holds_them(setup):
    """The predict partition reads its own parts of the track counts from memory (they change
    only by its commits): after a replay, after a batch processed and never committed, and after a
    fenced commit, what it keeps is what the store holds."""
    ds, art, sim, records = setup
    store = MemoryStore()
    a = Bus(ds, art, store)
    a.run(records[:2000])
    kept = a.predict.stored_counts
    assert kept is not None and kept.settled and kept == store.stored_counts(0, 10**6)
    a.predict.process(records[2000:2500])  # never committed: nothing of it is kept
    assert a.predict.stored_counts == store.stored_counts(0, 10**6)
    out = a.predict.process(records[2000:2500])
    b = Bus(ds, art, store)  # another worker takes the partition over and goes on
    b.topic = a.topic
    b.run(records[2000:3000])
    assert a.predict.commit(out) is False  # fenced: it reads the store again
    assert a.predict.stored_counts == b.predict.stored_counts == store.stored_counts(0, 10**6)
    b.run(records[3000:])
    assert b.predict.stored_counts == store.stored_counts(0, 10**6)
    _assert_same(b.figures(ds), sim)


def test_a_zombie_is_fenced_and_a_gap_is_refused(setup):
    ds, art, _, records = setup
    store = MemoryStore()
    a = Bus(ds, art, store)
    a.run(records[:1000])
    out = a.predict.process(records[1000:1200])  # a still thinks it owns them
    b = Bus(ds, art, store)  # meanwhile b took the partitions over
    b.topic = a.topic
    b.run(records[1000:1500])
    assert a.predict.commit(out) is False and a.predict.next_offset == 1500  # fenced and reloaded
    b.run(records[1500:1600])
    # a's next batch finds the store's offset moved as it reads: refused before it sends anything
    with pytest.raises(StateMoved):
        a.predict.process(records[1500:1700])
    with pytest.raises(OffsetGap):
        b.predict.process(records[1700:1800])
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


T, TRACK = 1.7e9, "x" * 22


def test_bad_entries_messages_become_dead_letters_in_the_warm_stage(setup):
    ds, art, _, records = setup
    bus = Bus(ds, art)
    bus.send(records[:200])
    good = len(bus.topic)
    bus.topic += [(good, b"{oops"), (good + 1, orjson.dumps({"v": 9, "src": 0, "e": []})),
                  (good + 2, orjson.dumps({"v": 1, "src": 0, "e": [[5, 0, 1.0]]})),
                  (good + 3, encode(0, T, [(3, 2, T, 1, 1, 0, TRACK, 1), (2, 2, T, 1, 1, 0, TRACK, 1)]))]
    out = bus.drain()
    assert [r for _, r, _ in out.dead_letters] == ["bad_json", "unknown_entries_version", "bad_entries", "bad_entries"]
    assert bus.warm.next_offset == good + 4
    assert bus.store.counters("rejected")["entries_bad_entries"] == 2


def _hostile_entries(value: bytes) -> list[tuple[str, bytes]]:
    """Messages a hostile or broken producer could put on the entries topic, each shaped like
    ``value`` (a real one) but with one field wrong: (the reason expected, the message)."""
    msg = orjson.loads(value)
    play = next(e for e in msg["e"] if e[1] == 0)

    def variant(**change):
        return orjson.dumps({**msg, **change})

    return [
        ("bad_entries", variant(e=[[play[0], 0, "2023-01-01", *play[3:]]])),  # time as a string
        ("bad_entries", variant(e=[[play[0], 0, play[2], str(play[3]), *play[4:]]])),  # user as a string
        ("bad_entries", variant(e=[[play[0], 1, play[2], play[6], "A", [7.5]]])),  # score outside [0, 1]
        ("bad_entries", variant(t=True)),
        ("unknown_source", variant(src=99)),
        ("clock_in_future", variant(t=4.1e9)),
        ("sequence_beyond_source", variant(e=[[10**12, *play[1:]]])),
    ]


def test_hostile_entries_messages_are_dead_lettered_and_change_no_figure(setup):
    """Each passes the envelope's shape; believed, it would move the watermark (a phantom source,
    a clock in 2100) or the duplicate filter (a sequence of 10**12) for good, or crash the warmer."""
    from stream.worker.stages.warm import SourceEnds

    ds, art, sim, records = setup
    clean, hostile = Bus(ds, art), Bus(ds, art)
    ends = SourceEnds(lambda src: None, lambda src: len(records))  # nothing fetched locally: the broker's
    clean.warm.source_ends = hostile.warm.source_ends = ends
    half = len(records) // 2
    clean.run(records[:half])
    hostile.run(records[:half])
    sample = next(v for _, v in hostile.topic if b'"e":[[' in v and b",0," in v)
    bad = _hostile_entries(sample)
    hostile.topic += [(len(hostile.topic) + i, value) for i, (_, value) in enumerate(bad)]
    out = hostile.drain()
    assert [r for _, r, _ in out.dead_letters] == [reason for reason, _ in bad]
    assert all(out.errors.values()) and len(out.errors) == len(bad)  # each dead letter says what is wrong
    clean.run(records[half:])
    hostile.run(records[half:])
    assert hostile.figures(ds)["promotions"] == clean.figures(ds)["promotions"] > 0
    _assert_same(hostile.figures(ds), sim)
    rejected = hostile.store.counters("rejected")
    assert {r: rejected[f"entries_{r}"] for r, _ in bad} == {"bad_entries": 4, "unknown_source": 1,
                                                            "clock_in_future": 1, "sequence_beyond_source": 1}


def test_a_record_that_makes_the_apply_step_raise_is_dead_lettered_and_the_stage_carries_on(setup, monkeypatch):
    """A value no check foresaw: the batch is caught at its boundary, the partition re-read and
    its records applied one by one; only the one that fails is dead-lettered, with the error."""
    import asyncio

    from cache_warmer.warmer import CacheWarmer
    from stream.worker.checkpoint import Checkpoint

    ds, art, sim, records = setup
    bus = Bus(ds, art)
    bus.send(records[:300])
    on_play = CacheWarmer.on_play

    def fragile(self, user_id, *args, **kwargs):
        if user_id == 424242:
            raise KeyError("a value nobody checked for")
        return on_play(self, user_id, *args, **kwargs)

    monkeypatch.setattr(CacheWarmer, "on_play", fragile)
    poison = encode(0, T, [(1, 0, T, 424242, 1, 0, TRACK, "A")])
    at = len(bus.topic) // 2
    bus.topic.insert(at, (at, poison))
    bus.topic = [(i, v) for i, (_, v) in enumerate(bus.topic)]
    sinks = list_sinks()["warm"]
    result = asyncio.run(Checkpoint(sinks).run([(bus.warm, bus.topic)]))
    assert not result.stopped and not result.fenced
    dead = [orjson.loads(v) for _, v, _ in sinks["dead_letters"].records]
    assert [(d["offset"], d["reason"]) for d in dead] == [(at, "apply_failed")]
    assert "KeyError" in dead[0]["error"]
    assert bus.warm.next_offset == len(bus.topic)  # the stage moved past it and on
    assert bus.store.counters("rejected")["entries_apply_failed"] == 1
    assert bus.store.counters("rejected").get("entries_bad_entries") is None


def test_records_that_fail_one_by_one_in_a_row_stop_the_partition_loudly(setup, monkeypatch):
    """When every record fails alone, the fault is in the partition's state: it is stopped (the
    worker's /livez names it), not emptied into the dead letters."""
    import asyncio

    from cache_warmer.warmer import CacheWarmer
    from stream.worker.checkpoint import MAX_POISONED_IN_A_ROW, Checkpoint

    ds, art, _, records = setup
    bus = Bus(ds, art)
    for i in range(0, 500, 100):
        bus.send(records[i:i + 100])
    start = bus.warm.next_offset
    monkeypatch.setattr(CacheWarmer, "apply", lambda self, entries: (_ for _ in ()).throw(RuntimeError("broken state")))
    sinks = list_sinks()["warm"]
    result = asyncio.run(Checkpoint(sinks).run([(bus.warm, bus.topic)]))
    assert [(s.partition, s.offset) for s in result.stopped] == [(0, start + MAX_POISONED_IN_A_ROW - 1)]
    assert len(sinks["dead_letters"].records) == MAX_POISONED_IN_A_ROW - 1


def test_predictions_asked_together_equal_each_asked_alone(setup):
    """POST /predict scores the requests that wait together in one batch (one Redis round trip,
    one matrix product): each answer is the one it would get alone."""
    import asyncio

    from stream.worker.predictions import PredictBatcher

    ds, art, _, records = setup
    bus = Bus(ds, art)
    bus.run(records[:1500])
    events = [orjson.loads(v) for _, v in records[:1500]]
    asks = list({(e["user_id"], e["track_id"]) for e in events if e.get("track_id")})[:60]
    asks.append((987_654, asks[0][1]))  # a user nobody has seen
    together = bus.worker.predict_many(asks)
    alone = [bus.worker.predict(u, t) for u, t in asks]
    assert together == alone
    assert together[-1]["known_user"] is False and all(a["known_user"] for a in together[:-1])

    batcher = PredictBatcher(bus.worker.predict_many)

    async def ask_all():
        return await asyncio.gather(*(batcher.predict(u, t) for u, t in asks))

    assert asyncio.run(ask_all()) == alone
    assert batcher.batches == 1  # all waited together
    batcher.close()


def test_a_large_batch_s_entries_go_as_several_messages_the_warm_stage_applies_one_by_one(setup, monkeypatch):
    """Entries of a big predict batch go as messages of ``ENTRIES_PER_MESSAGE`` (none near
    Kafka's 1 MiB message limit); each but the last carries the time of its latest entry as its
    clock, so the warm stage, applying every message as its own batch as soon as it comes, gives
    the simulation's figures exactly (nothing applied early, nothing late)."""
    from stream.worker.stages import entry_codec

    ds, art, sim, records = setup
    monkeypatch.setattr(entry_codec, "ENTRIES_PER_MESSAGE", 250)
    bus = Bus(ds, art)
    messages = 0
    for i in range(0, len(records), 3000):
        out = bus.send(records[i:i + 3000])
        messages += sum(1 for sink, *_ in out.publish if sink == "entries")
        while bus.warm.next_offset < len(bus.topic):  # one message per warm batch
            rest = bus.topic[bus.warm.next_offset:bus.warm.next_offset + 1]
            applied = bus.warm.process(rest)
            assert applied.late_entries == 0 and not applied.dead_letters
            assert bus.warm.commit(applied)
    assert messages > 3 * (len(records) // 3000)  # every batch went as several messages
    fig = bus.figures(ds)
    _assert_same(fig, sim)
    assert fig["warm_caught_up"]


def _split_reference(clock, entries, origins, limit):
    """``split_batch``'s rule spelled out entry by entry (as it was first written)."""
    n = len(entries)
    if n <= limit:
        return [(clock, entries, origins)]
    later = [math.inf] * (n + 1)
    for i in range(n - 1, -1, -1):
        later[i] = min(entries[i][2], later[i + 1])
    out, start, latest = [], 0, -math.inf
    for i in range(n):
        if i - start >= limit and latest < later[i] and (
                entries[i][0] != entries[i - 1][0] or origins is not None and origins[i] != origins[i - 1]):
            out.append((latest, entries[start:i], origins[start:i] if origins else None))
            start = i
        latest = max(latest, entries[i][2])
    return out + [(clock, entries[start:], origins[start:] if origins else None)]


def test_entries_split_where_the_rule_entry_by_entry_splits_them():
    """``split_batch`` looks at the places a message may end from its limit on only: the same
    messages as the rule applied at every entry, for batches in time order, out of order (a skip
    resolving its play later), with runs of one instant, with and without origins."""
    import random

    from stream.worker.stages.entry_codec import split_batch

    rnd = random.Random(3)
    for case in range(300):
        n, limit = rnd.randint(0, 400), rnd.randint(1, 60)
        seq, t, entries, origins = 0, 1.7e9, [], []
        while len(entries) < n:
            seq += rnd.randint(1, 3)
            t += rnd.choice((0.0, 0.0, 1.0, 5.0))
            for _ in range(rnd.randint(1, 3)):
                late = rnd.random() < 0.05  # an entry behind the ones before it
                entries.append((seq, 0, t - 30.0 if late else t))
                origins.append(rnd.choice((-1, -1, 1)))
        with_origins = origins if case % 2 else None
        assert list(split_batch(t + 1, entries, with_origins, limit)) == _split_reference(t + 1, entries, with_origins, limit)


def test_chunked_entries_keep_each_event_whole_and_clocks_below_what_follows():
    from stream.worker.stages.entry_codec import split_batch

    def encode_batch(src, clock, entries, origins, limit):  # the messages the predict stage sends
        return [encode(src, *piece) for piece in split_batch(clock, entries, origins, limit)]

    entries, origins = [], []
    for seq in range(400):  # an event's entries share its sequence; some at one instant
        t = 1.7e9 + seq // 3
        for kind in ("p", "u") if seq % 2 else ("p",):
            entries.append([seq, kind, t])
            origins.append(-1 if seq % 5 else 1)
    values = encode_batch(0, 1.7e9 + 500, entries, origins, limit=50)
    assert len(values) > 5
    seen, clock_before = [], -1.0
    for value in values:
        msg = orjson.loads(value)
        assert all(e[2] <= msg["t"] for e in msg["e"]) and all(e[2] > clock_before for e in msg["e"])
        assert len(msg["e"]) <= 55  # the limit, plus at most the rest of one instant (3 events)
        if seen:
            assert (msg["e"][0][0], msg["o"][0]) != (seen[-1][0][0], seen[-1][1])
        seen += list(zip(msg["e"], msg["o"]))
        clock_before = msg["t"]
    assert [e for e, _ in seen] == entries and [o for _, o in seen] == origins
    assert encode_batch(0, 1.7e9 + 500, entries[:40], origins[:40], limit=50) == [
        orjson.dumps({"v": 1, "src": 0, "t": 1.7e9 + 500, "e": entries[:40], "o": origins[:40]})]
