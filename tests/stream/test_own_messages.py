"""A worker running both stages takes the entries messages its own predict stage made as made
(``entry_codec.OwnMessages``), without parsing and checking them again: that is only right if
every such message parses back to the very entries it was made from and passes every check a
message from elsewhere must, and if the figures are the ones a worker that parses everything
gives."""
import math

import pytest

from stream.cli.jobs import live_figures
from stream.worker.in_memory import replay_in_memory
from stream.worker.stages import entry_codec
from stream.worker.stages.entry_codec import OwnMessages, decode, encode
from tests.stream.conftest import memory_worker, trained_replay


@pytest.fixture(scope="module")
def noisy(noisy_data, tmp_path_factory):
    return trained_replay(noisy_data, tmp_path_factory, "own")


def _as_parsed(entries):
    return [[list(v) if type(v) is tuple else v for v in e] for e in entries]


class Checked(OwnMessages):
    """Keeps as the worker does, and parses and checks each message as a warm stage elsewhere would."""

    def __init__(self, sources, window, owned=None):
        super().__init__(owned=owned)
        self.sources, self.window, self.kept, self.checked = sources, window, 0, 0

    def keep(self, warm_partition, value, source_partition, clock, entries, origins):
        src, t, parsed, parsed_origins = decode(value, self.sources, None, self.window)  # raises Rejected if any check fails
        assert (src, t, parsed, parsed_origins) == (source_partition, clock, _as_parsed(entries), origins)
        self.checked += 1
        kept = super().keep(warm_partition, value, source_partition, clock, entries, origins)
        self.kept += kept
        return kept


@pytest.mark.parametrize("partitions,batch", [(1, 700), (3, 250)])
def test_own_messages_parse_back_to_what_they_were_made_from_and_give_the_same_figures(noisy, partitions, batch):
    ds, events, _ = noisy
    checked = memory_worker(noisy, partitions)
    assert isinstance(checked.own_messages, OwnMessages)  # a worker with both stages keeps its own messages
    checked.own_messages = own = Checked(partitions, checked.window, checked.stages["warm"].runtimes.__contains__)
    replay_in_memory(checked, events, batch_size=batch)
    assert own.checked >= own.kept > 50 and own.taken == own.kept and len(own) == 0  # every message kept was read back here

    parsing = memory_worker(noisy, partitions)
    parsing.own_messages = None  # every message parsed and checked
    replay_in_memory(parsing, events, batch_size=batch)
    a = live_figures(checked.settings, checked.store, ds.catalogue)
    b = live_figures(parsing.settings, parsing.store, ds.catalogue)
    assert a["predictions"] > 0 and a["promotions"] > 0
    for key in ("predictions", "accuracy", "plays", "full_play_hits", "promotions", "evictions", "rejected",
                "warm_late_entries"):
        assert a[key] == b[key], key


def _skips_sent_first(events):
    """The events with every skip sent just before its play (a client that buffered the play):
    the play resolves at the skip's time, which an earlier batch read."""
    out, at = [], {}
    for e in events:
        if e.kind == "play":
            at[(e.user_id, e.session_id, e.track_id)] = len(out)
        elif e.kind == "skip" and (e.user_id, e.session_id, e.track_id) in at:
            i = at.pop((e.user_id, e.session_id, e.track_id))
            if out[i].kind == "play" and i == len(out) - 1:
                out.insert(i, e)
                continue
        out.append(e)
    return out


def test_skips_sent_before_their_plays_resolve_in_messages_that_pass_every_check(noisy):
    ds, events, _ = noisy
    events = _skips_sent_first(events)
    for batch in (7, 23):
        worker = memory_worker(noisy, 2)
        worker.own_messages = own = Checked(2, worker.window)
        replay_in_memory(worker, events, batch_size=batch)
        repaired = sum(rt.engine.repaired.get("skip_before_play", 0) for rt in worker.stages["predict"].runtimes.values())
        assert repaired > 100 and own.kept > 100 and own.taken == own.kept


def test_a_message_read_back_is_taken_once_and_its_own_fields_are_still_checked():
    own = OwnMessages()
    entries = [(5, 0, 1.7e9, 1, 2, 0, "t" * 22, "A")]
    value = encode(0, 1.7e9, entries)
    assert own.keep(0, value, 0, 1.7e9, entries, None)
    assert decode(value, 2, 1.7e9, own=own)[2] is entries  # as made, not parsed
    assert decode(value, 2, 1.7e9, own=own)[2] == _as_parsed(entries)  # read again: parsed
    own.keep(0, value, 0, 1.7e9, entries, None)
    with pytest.raises(entry_codec.Rejected) as rejected:  # a message's clock is judged against where it is read
        decode(value, 2, 1.7e9 - 10 * 86400, own=own)
    assert rejected.value.reason == "clock_in_future"
    assert len(own) == 0


def test_kept_messages_are_bounded_by_entries_the_oldest_going_first():
    own = OwnMessages(limit=10)
    values = []
    for i in range(5):
        entries = [(i, 0, 1.7e9 + i, 1, 2, j, "t" * 22, "A") for j in range(4)]
        values.append(encode(0, 1.7e9 + i, entries))
        own.keep(0, values[-1], 0, 1.7e9 + i, entries, None)
    assert len(own) == 2 and own.take(values[0]) is None and own.take(values[4]) is not None
    assert math.isfinite(decode(values[3], own=own)[1])


def test_messages_for_warm_partitions_another_process_reads_are_not_kept():
    own = OwnMessages(owned={1}.__contains__)
    entries = [(5, 0, 1.7e9, 1, 2, 0, "t" * 22, "A")]
    assert not own.keep(0, encode(0, 1.7e9, entries), 0, 1.7e9, entries, None)
    assert own.keep(1, encode(0, 1.7e9, entries), 0, 1.7e9, entries, None) and len(own) == 1
    assert not own.keep(1, encode(0, 1.7e9, []), 0, 1.7e9, [], None)  # a clock alone
