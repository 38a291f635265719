"""The batch commit as one unit: process -> sinks -> flush -> commit -> sensors, on list sinks and
the memory store. It publishes before it commits, retries a failing sink without losing or
committing anything, reports a fenced partition, and gives the simulation's figures."""
import asyncio

import orjson
import pytest

from cache_warmer.policies import ThresholdPolicy
from cache_warmer.simulation import simulate
from stream.bootstrap import tier_config_for
from stream.kafka_io import partition_of, track_partition_of
from stream.cli.jobs import live_figures
from stream.settings import Settings
from stream.sinks import ListSink
from stream.store import Changes, StateMoved
from stream.worker.in_memory import list_sinks, partition_records, replay_in_memory
from tests.stream.conftest import memory_worker, trained_replay


@pytest.fixture(scope="module")
def parts(small_long_data, tmp_path_factory):
    return trained_replay(small_long_data, tmp_path_factory, "ck")


def _simulate(parts, n):
    ds, events, art = parts
    whole_cache = tier_config_for(Settings(warm_partitions=1), ds.catalogue)  # the simulation splits it
    return simulate(events, ds.catalogue, [art], whole_cache, [ThresholdPolicy("model", "model")],
                    count_from=float("-inf"), partitions=n, user_partition=lambda u: partition_of(u, n),
                    track_partition=lambda t: track_partition_of(t, n), progress=False)["policies"]["model"]


def test_the_checkpoint_gives_the_simulations_figures_and_feeds_sinks_and_sensors(parts):
    ds, events, art = parts
    seen = []
    worker = memory_worker(parts, sensors=[lambda out, seconds: seen.append(out)])
    result = replay_in_memory(worker, events, batch_size=500)
    assert not result.fenced and seen == result.committed
    fig = live_figures(worker.settings, worker.store, ds.catalogue)
    expected = _simulate(parts, 1)  # one partition per stage: the same order of work, the same figures
    for key in ("predictions", "accuracy", "promotions", "full_play_hits", "wasted_promotions", "evictions"):
        assert fig[key] == expected[key], key
    commands = worker.stages["warm"].checkpoint.sinks["commands"].records
    decisions = [d for out in result.committed if out.effects for d in out.effects.decisions]
    assert len(commands) == len(decisions) > 0
    assert orjson.loads(commands[0][1])["track"] == decisions[0].track
    # each outcome's cell was computed once, where it was resolved (the predict stage); the
    # sensors and the A/B counters (committed with the state) agree with the figures
    cells = {}
    for out in result.committed:
        for o in out.outcomes:
            cells[o.cell] = cells.get(o.cell, 0) + 1
    assert cells == expected["confusion"]
    assert worker.store.counters("ab:A") == expected["confusion"]


def test_four_and_four_partitions_give_the_simulations_figures_whatever_the_batches(parts):
    """Track counts move by epoch (a play reads every partition's plays of earlier days), so
    neither the batch sizes nor the partitioning move a figure: 4 + 4 partitions in batches of
    300 or 1,100 records give the 4-shard simulation's figures exactly, and its accuracy is the
    one-shard simulation's."""
    ds, events, _ = parts
    expected = _simulate(parts, 4)
    assert expected["accuracy"] == _simulate(parts, 1)["accuracy"]
    for batch in (300, 1100):
        worker = memory_worker(parts, partitions=4)
        replay_in_memory(worker, events, batch_size=batch)
        fig = live_figures(worker.settings, worker.store, ds.catalogue)
        assert fig["warm_caught_up"] and fig["plays"] == expected["plays"]
        for key in ("predictions", "accuracy", "full_play_hits", "hit_ratio", "promotions", "wasted_promotions"):
            assert fig[key] == expected[key], (batch, key)


class FlakySink(ListSink):
    """Fails its first ``failures`` flushes, as a sink whose broker is away would."""

    def __init__(self, topic, failures):
        super().__init__(topic)
        self.failures = failures

    async def flush(self):
        if self.failures:
            self.failures -= 1
            raise ConnectionError("broker away")
        await super().flush()


def test_a_failing_sink_is_retried_and_nothing_is_committed_before_it_flushes(parts, monkeypatch):
    _, events, _ = parts
    sinks = list_sinks()
    entries = sinks["predict"]["entries"] = FlakySink("entries", failures=2)
    worker = memory_worker(parts, sinks=sinks)
    predict = worker.stages["predict"]
    errors = []
    predict.checkpoint.on_flush_error = errors.append
    monkeypatch.setattr("stream.worker.checkpoint.BACKOFF.compute", lambda attempt: 0.0)
    store = worker.store
    committed_at_flush = []
    original = ListSink.flush

    async def watching_flush(self):
        committed_at_flush.append(store.offset(0))
        await original(self)

    monkeypatch.setattr(ListSink, "flush", watching_flush)
    records = partition_records(events[:800], 1)[0]
    result = asyncio.run(predict.checkpoint.run([(predict.runtime(0), records)]))
    assert len(errors) == 2 and isinstance(errors[0], ConnectionError)
    assert committed_at_flush and set(committed_at_flush) == {0}  # flushed before the commit
    assert store.offset(0) == len(records) and result.committed
    assert len(entries.records) == len(result.committed[0].publish) == 1  # one message per warm partition


def test_a_fenced_partition_is_reported_not_committed(parts):
    _, events, _ = parts
    worker = memory_worker(parts)
    records = partition_records(events[:600], 1)[0]
    predict = worker.stages["predict"]
    rt = predict.runtime(0)
    entries = predict.checkpoint.sinks["entries"]

    class Moving(ListSink):  # another worker moves the partition on while the batch is flushed
        async def flush(self):
            await super().flush()
            assert worker.store.commit(0, 0, 5, Changes())

    predict.checkpoint.sinks["entries"] = Moving("entries")
    result = asyncio.run(predict.checkpoint.run([(rt, records)]))
    assert not result.committed and [o.partition for o in result.fenced] == [0]
    assert worker.store.offset(0) == 5 and rt.next_offset == 5  # reloaded
    # moved before the batch reads the store: refused before anything of it is sent
    predict.checkpoint.sinks["entries"] = entries
    assert worker.store.commit(0, 5, 9, Changes())
    with pytest.raises(StateMoved):
        asyncio.run(predict.checkpoint.run([(rt, [r for r in records if r[0] >= 5])]))
    assert not entries.records and worker.store.offset(0) == 9
