"""Mis-keyed events repartitioned, without servers: the predict partitions' runtimes on the
memory store, the sessions and repartition topics as lists. Events keyed by session or by nothing
give the figures of events keyed by user; a forwarded event re-sent after a crash is applied
once; a partition waits for the clocks of the others still reading; the repartition offset is
fenced with the sessions offset; forwarded events held past the cut survive a restart."""
import math
import random
import zlib

import orjson
import pytest

from models.artifacts import load
from models.events import Event
from models.parsing import TimeWindow
from models.replay import replay_order
from models.rejections import Rejected
from stream.bootstrap import build_worker
from stream.cli import main
from stream.cli.jobs import live_figures
from stream.files import read_dataset
from stream.kafka_io import partition_of
from stream.settings import Settings
from stream.sinks.kafka_topic import MAX_BATCH_BYTES
from stream.store import Changes
from stream.stores.memory import MemoryStore
from stream.worker.in_memory import list_sinks
from stream.worker.scheduler import RunScheduler
from stream.worker.stages import entry_codec, predict, route_codec
from stream.worker.stages.held import HeldQueues
from stream.worker.stages.predict import SOURCE_IDLE_SECONDS, order_of

P = 2
SETTINGS = Settings(partitions=P, warm_partitions=1)
COMPARED = ("predictions", "accuracy", "majority_accuracy", "plays", "full_plays", "full_play_hits", "promotions",
            "wasted_promotions", "evictions", "events_by_type")


@pytest.fixture(scope="module")
def setup(small_long_data, tmp_path_factory):
    model = tmp_path_factory.mktemp("rp") / "m.joblib"
    assert main(["train", "--data", str(small_long_data), "--out", str(model), "--train-fraction", "0.5"]) == 0
    ds = read_dataset(small_long_data, progress=False)
    return ds, load(model), replay_order(ds.events)


class Topics:
    """Two predict partitions and one warm partition on one store; the sessions topic keyed as
    ``key`` says, every record of it read (and routed) before any is applied, as a worker that
    starts on a full topic does."""

    def __init__(self, setup, events, key: str, store=None):
        ds, art, _ = setup
        self.ds = ds
        self.store = store or MemoryStore()
        self.worker = build_worker(SETTINGS, store=self.store, catalogue=ds.catalogue, artifact=art,
                                   sinks=list_sinks())
        self.predict = {p: self.worker.predict_runtime(p) for p in range(P)}
        self.warm = self.worker.warm_runtime(0)
        rnd = random.Random(7)
        self.sessions: dict[int, list] = {p: [] for p in range(P)}
        for e in events:
            p = {"user": lambda: partition_of(e.user_id, P), "none": lambda: rnd.randrange(P),
                 "session": lambda: zlib.crc32(str(e.session_id).encode()) % P}[key]()
            self.sessions[p].append((len(self.sessions[p]), orjson.dumps(e.to_json()), e.ts))
        self.forwarded: dict[int, list] = {p: [] for p in range(P)}
        self.entries: list[tuple[int, bytes, None]] = []

    def route_all(self) -> None:
        for p, rt in self.predict.items():
            for q, value in rt.route(rt.decode(self.sessions[p]), True):
                self.forwarded[q].append((len(self.forwarded[q]), value, None))

    def apply(self, p: int, batch: int = 400, until: float = math.inf, commit: bool = True) -> None:
        """Partition ``p``'s own records in batches, its whole repartition partition with the first,
        forwarded events cut as the worker cuts them (before the first own record left)."""
        rt = self.predict[p]
        own = rt.decode(self.sessions[p][rt.next_offset:])
        inbox = rt.decode_forwarded(self.forwarded[p][rt.rep_next:])
        rt.hear(inbox)
        i = 0
        while True:
            chunk = [r for r in own[i:i + batch] if r[3].ts <= until if type(r[3]) is Event]
            i += batch
            rest = next((r[3] for r in own[i:] if type(r[3]) is Event), None)
            rt.until = min((until, math.inf), order_of(rest)) if rest is not None else (until, math.inf)
            rt.inbox, inbox = inbox, []
            out = rt.process(chunk)
            self.entries += [(len(self.entries), v, None) for s, _, v, _ in out.publish if s == "entries"]
            if not commit:
                return
            assert rt.commit(out)
            if i >= len(own) or own[i][3].ts > until:
                return

    def warm_up(self) -> dict:
        out = self.warm.process(self.entries[self.warm.next_offset:])
        assert self.warm.commit(out)
        self.warm.idle_wall_seconds = 0.0  # the data ended
        assert self.warm.commit(self.warm.process([]))
        return live_figures(SETTINGS, self.store, self.ds.catalogue)

    def run(self) -> dict:
        self.route_all()
        for p in range(P):
            self.apply(p)
        return self.warm_up()


def _same(fig, expected):
    for key in COMPARED:
        assert fig[key] == expected[key], key


def test_events_keyed_by_session_or_by_nothing_give_the_figures_of_events_keyed_by_user(setup):
    ds, art, events = setup
    mine = [e for e in events if partition_of(e.user_id, P) == 0]  # one partition's: no batch timing
    a = Topics(setup, mine, "user").run()
    assert a["predictions"] > 5_000 and a["warm_caught_up"]
    for key in ("none", "session"):
        t = Topics(setup, mine, key)
        fig = t.run()
        moved = len(t.sessions[1])
        assert moved > len(mine) // 4
        assert fig["contract"]["misrouted:wrong_partition"] == fig["contract"]["repartitioned"] == moved, key
        assert "repartitioned_late" not in fig["contract"] and fig["warm_caught_up"] and t.warm.late == 0, key
        _same(fig, a)


def test_a_large_run_is_forwarded_as_messages_of_bounded_size_with_the_same_figures(setup, monkeypatch):
    """A fetched run of a producer that keys by nothing is routed in slices of ``FORWARD_BYTES``:
    each slice's forwarded events a message of their own, its clock how far the slice has read."""
    _, _, events = setup
    whole = Topics(setup, events, "none")
    whole.route_all()
    sizes = [len(v) for m in whole.forwarded.values() for _, v, _ in m]
    assert 20_000 < max(sizes) <= predict.FORWARD_BYTES + 200 < MAX_BATCH_BYTES - 200  # each a produce batch of its own
    expected = Topics(setup, events, "none").run()
    monkeypatch.setattr(predict, "FORWARD_BYTES", 20_000)
    t = Topics(setup, events, "none")
    fig = t.run()
    for q, messages in t.forwarded.items():
        assert len(messages) > 10
        clocks = []
        for i, (_, value, _) in enumerate(messages):
            msg = orjson.loads(value)
            assert len(value) <= 20_000 + 200 and (msg["e"] or i == len(messages) - 1)  # only the last may be clock-only
            clocks.append(msg["t"])
            assert not [e for _, e, _ in route_codec.decode(value, P)[3] if type(e) is not Event]  # none past t
        assert clocks == sorted(clocks) and orjson.loads(messages[-1][1])["done"]
    assert fig["contract"]["repartitioned"] == expected["contract"]["repartitioned"] > len(events) // 3
    _same(fig, expected)


def test_every_user_on_either_partition_is_applied_where_it_lives(setup):
    """All users, sent with no key: each partition forwards the other's users and applies its own;
    every event is applied once, and nothing waits at the end."""
    _, _, events = setup
    t = Topics(setup, events, "none")
    fig = t.run()
    contract = fig["contract"]
    assert contract["misrouted:wrong_partition"] == contract["repartitioned"] > len(events) // 3
    assert sum(fig["events_by_type"].values()) == len(events) and fig["warm_caught_up"]
    assert fig["forwarded_waiting"] == 0


def _one_partitions_users(setup) -> tuple[list, dict, Topics]:
    """The events of partition 0's users, their figures keyed by user, and the same events sent
    with no key (nothing read yet)."""
    mine = [e for e in setup[2] if partition_of(e.user_id, P) == 0]
    return mine, Topics(setup, mine, "user").run(), Topics(setup, mine, "none")


def test_a_source_re_read_after_a_crash_forwards_again_and_each_event_is_applied_once(setup):
    _, expected, t = _one_partitions_users(setup)
    t.route_all()
    t.route_all()  # partition 1 died before committing and read its records again: all forwarded twice
    t.apply(1)
    t.apply(0, commit=False)  # partition 0 published a batch and died before its commit...
    t.predict[0] = t.worker.predict_runtime(0)  # ...and starts again from the store
    t.apply(0)
    fig = t.warm_up()
    _same(fig, expected)
    assert fig["contract"]["repartitioned"] == len(t.sessions[1])


def test_forwarded_events_held_past_the_cut_survive_a_restart(setup):
    mine, expected, t = _one_partitions_users(setup)
    t.route_all()
    t.apply(1)
    middle = mine[len(mine) // 2].ts
    t.apply(0, until=middle)  # every forwarded event taken in, those after the middle held in the store
    held = _held(t.store)
    assert held > 1000 and t.predict[0].rep_next == len(t.forwarded[0])
    assert live_figures(SETTINGS, t.store, t.ds.catalogue)["forwarded_waiting"] == held
    t.predict[0] = t.worker.predict_runtime(0)  # a restart: the held events come from the store
    assert sum(map(len, t.predict[0].forwarded.values())) == held
    t.apply(0)
    fig = t.warm_up()
    _same(fig, expected)
    assert _held(t.store) == 0 and all(t.store.queue(0, src) == [] for src in range(P))


def _held(store) -> int:
    """The forwarded events predict partition 0 holds back in the store, as a restart reads them."""
    return sum(map(len, HeldQueues().load(store, 0, orjson.loads(store.blob(0)), "forwarded").values()))


def test_a_zombie_that_moved_only_its_repartition_offset_is_fenced(setup):
    _, _, events = setup
    mine = [e for e in events if partition_of(e.user_id, P) == 0][:3000]
    store = MemoryStore()
    t = Topics(setup, mine, "none", store)
    t.route_all()
    zombie = t.worker.predict_runtime(0)
    successor = t.worker.predict_runtime(0)
    for rt in (successor, zombie):  # both take the forwarded events in, with no sessions record
        inbox = rt.decode_forwarded(t.forwarded[0])
        rt.hear(inbox)
        rt.inbox = inbox
        out = rt.process([])
        assert out.next_offset == out.start_offset and out.changes.inputs["repartition"] == (0, len(inbox))
        committed = rt.commit(out)
        assert committed is (rt is successor)
    assert store.position(0, "repartition") == len(t.forwarded[0]) and zombie.rep_next == len(t.forwarded[0])


def test_a_partition_waits_for_the_clock_of_every_source_still_reading(setup):
    _, _, events = setup
    t = Topics(setup, events[:2000], "none")
    rt = t.predict[0]
    now = rt.since
    assert rt.reach(now) == -math.inf  # partition 1 said nothing yet
    assert rt.reach(now + SOURCE_IDLE_SECONDS) == math.inf  # ...for so long it is not waited for
    reading = t.predict[1].route(t.predict[1].decode(t.sessions[1][:100]), False)
    rt.hear(rt.decode_forwarded([(0, dict(reading)[0], None)]))
    assert rt.reach() == t.predict[1].read_clock > 0
    done = t.predict[1].route([], True)
    rt.hear(rt.decode_forwarded([(1, dict(done)[0], None)]))
    assert rt.reach() == math.inf  # it has read all there is
    fresh = t.worker.predict_runtime(0)  # a source heard from that forwards nothing: no wait for it
    quiet = t.predict[1].route([], False)
    fresh.hear(fresh.decode_forwarded([(0, dict(quiet)[0], None)]))
    assert fresh.reach() == math.inf and fresh.heard[1][1] is False


def test_the_scheduler_cuts_a_partition_at_its_floor():
    s = RunScheduler(100, 0.1, lambda r: r[1])
    s.add(0, "run", [(i, float(i)) for i in range(10)])
    work, done = s.take({0: -math.inf}, set(), floors={0: 4.0})
    assert work == [(0, [(i, float(i)) for i in range(5)])] and done == []
    work, done = s.take({0: 4.0}, set(), floors={0: -math.inf})
    assert work == [] and done == []
    work, done = s.take({0: 4.0}, set(), force=True, floors={0: math.inf})
    assert [r[0] for r in work[0][1]] == [5, 6, 7, 8, 9] and done == ["run"]


def test_the_memory_store_fences_every_input():
    store = MemoryStore()
    assert store.init_offset(0, 5, "repartition") == 5 and store.position(0, "repartition") == 5
    assert store.commit(0, 0, 10, Changes(inputs={"repartition": (5, 9)}))
    assert not store.commit(0, 10, 10, Changes(inputs={"repartition": (5, 12)}))  # the input moved
    assert store.commit(0, 10, 10, Changes(inputs={"repartition": (9, 12)}))
    assert store.offset(0) == 10 and store.position(0, "repartition") == 12


def test_the_repartition_wire_form_is_checked_like_the_sessions_topic():
    e = Event(1_700_000_000.5, 10, 7, 3, "play", "A" * 22)
    value = route_codec.encode(1, e.ts, False, [(4, orjson.dumps(e.to_json()))])
    src, clock, done, events, stamp = route_codec.decode(value, 2, e.ts)
    assert stamp is None and route_codec.decode(route_codec.encode(1, e.ts, False, [], ("w1", 3)), 2)[4] == ("w1", 3)
    assert (src, clock, done) == (1, e.ts, False) and events[0][0] == 4 and events[0][1].user_id == 7
    assert route_codec.decode(route_codec.encode(0, -math.inf, True, []), 2)[1:3] == (-math.inf, True)
    bad = {
        "unknown_source": route_codec.encode(5, e.ts, False, []),
        "clock_in_future": route_codec.encode(1, e.ts + 10_000, False, []),
        "bad_forwarded": orjson.dumps({"v": 1, "src": 1, "t": e.ts, "done": False, "e": [[4, {}], [3, {}]]}),
        "unknown_repartition_version": orjson.dumps({"v": 9}),
        "bad_json": b"{",
    }
    for reason, value in bad.items():
        with pytest.raises(Rejected) as got:
            route_codec.decode(value, 2, e.ts, TimeWindow())
        assert got.value.reason == reason, reason
    # an event past the message's clock, or not an event: rejected alone, the message kept
    late = route_codec.encode(1, e.ts - 1, False, [(4, orjson.dumps(e.to_json())), (5, b'{"user_id": "x"}')])
    _, _, _, events, _ = route_codec.decode(late, 2, e.ts)
    assert [type(ev) for _, ev, _ in events] == [Rejected, Rejected]


def test_entries_of_forwarded_events_carry_their_origin():
    t = 1_700_000_000.0
    entries = [[3, 0, t, 1, 1, 0, "A" * 22, "A"], [7, 0, t + 1, 2, 1, 0, "B" * 22, "A"],
               [5, 0, t + 2, 3, 1, 0, "C" * 22, "A"]]
    value = entry_codec.encode(0, t + 2, entries, [-1, 1, -1])
    assert entry_codec.decode(value, 2, t + 2)[3] == [-1, 1, -1]  # sequences in order per origin
    for origins in ([-1, 0, -1], [-1, 2, -1], [-1, 1]):  # itself, a partition the topic lacks, not one each
        with pytest.raises(Rejected):
            entry_codec.decode(entry_codec.encode(0, t + 2, entries, origins), 2, t + 2)
    with pytest.raises(Rejected):  # one origin's sequences out of order
        entry_codec.decode(entry_codec.encode(0, t + 2, entries, [-1, -1, -1]), 2, t + 2)
    assert entry_codec.stream_of(0, None, 4) == 0 and entry_codec.stream_of(1, 3, 4) == 11
