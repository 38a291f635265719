"""The wire form of the predict stage's entries (``cache_warmer/entries.py``): one Kafka message
per (predict batch, warm partition), so the warm stage pays Kafka's and Faust's per-message cost
once per batch rather than once per play; a large batch's go as several (``split_batch``), each
well under Kafka's default 1 MiB message limit.

    {"v": 1, "src": <sessions partition>, "t": <event time of its batch's last event>,
     "e": [[seq, kind, ...], ...], "o": [<origin of each entry, -1: src>, ...] (only if any)}

``seq`` is the offset of the event in its sessions partition (its origin's, else ``src``'s): with
them it identifies what the warm stage has applied (a predict batch replayed after a crash
re-sends the same offsets). A predict partition applies events other partitions forwarded to it
(a producer that keyed otherwise than by user, ``predict.py``); their entries keep their place
among its own (the order it made them in, which same-instant entries need), and ``o`` says whose
offsets their sequences are: each (``src``, origin) is a sequence of its own (``stream_of``). Every
predict batch sends one to every warm partition, entries or not: ``t`` is the source's clock,
from which the warm stage knows how far every source has come (``warm.py``).

The topic is a contract like the sessions topic: anything can be produced to it, and one value
the warm stage believed (a phantom source, a clock in the year 3000, a sequence of 10**12) would
move its watermark or its duplicate filter for good. So ``decode`` checks every field's type and
the values it can check alone (a known source, times within the sessions topic's window, entry
times not past the message's clock); the warm stage checks the sequences against the source's end
offset. What fails is rejected with a reason (dead-lettered, counted), never applied."""
from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from itertools import accumulate

import orjson

from cache_warmer.entries import PLAY, RESOLVED, UPCOMING
from models.contract import TRACK_ID_LEN
from models.parsing import TimeWindow
from models.rejections import Rejected

VERSION = 1
_LENGTH = {PLAY: 8, UPCOMING: 6, RESOLVED: 8}
_VARIANTS = ("A", "B", None)
MAX_ENTRIES = 200_000
"""Entries one message may carry (a message with more is rejected)."""
ENTRIES_PER_MESSAGE = 8_000
"""Entries the predict stage puts in one message (~600 KB): a batch's entries for a warm partition
go as several messages past it, so none nears Kafka's default ``message.max.bytes`` (1 MiB)
whatever SKIPCACHE_BATCH_SIZE is."""


def encode(source_partition: int, clock: float, entries: list[tuple], origins: list[int] | None = None) -> bytes:
    if origins is None:
        return orjson.dumps({"v": VERSION, "src": source_partition, "t": clock, "e": entries})
    return orjson.dumps({"v": VERSION, "src": source_partition, "t": clock, "e": entries, "o": origins})


def split_batch(clock: float, entries: list[tuple], origins: list[int] | None = None,
                limit: int | None = None) -> Iterator[tuple[float, list[tuple], list[int] | None]]:
    """(clock, entries, origins) of each message a batch's entries for one warm partition go as:
    ``limit`` entries each (default ``ENTRIES_PER_MESSAGE``; one message if they fit; a message
    grows past it only while no entry can end it). A message but the last says, as its clock,
    the time of its latest entry: the warm stage may apply up to there before the next arrives,
    so a message ends only where every entry after it is later than every entry in it, and never
    inside one event's entries (they share a sequence, which the warm stage's duplicate filter
    reads per message)."""
    limit = ENTRIES_PER_MESSAGE if limit is None else limit
    n = len(entries)
    if n <= limit:
        yield clock, entries, origins
        return
    times = [e[2] for e in entries]
    later = None  # the earliest time from each entry on, made if a first look at one fails
    start = 0
    while n - start > limit:  # the places a message may end are looked at from its limit on only
        i = start + limit
        latest = max(times[start:i])
        while i < n:
            if entries[i][0] != entries[i - 1][0] or origins is not None and origins[i] != origins[i - 1]:
                if later is None:
                    if latest < min(times[i:]):
                        break
                    later = list(accumulate(reversed(times), min))[::-1]
                elif latest < later[i]:
                    break
            if times[i] > latest:
                latest = times[i]
            i += 1
        if i == n:
            break
        yield latest, entries[start:i], origins[start:i] if origins else None
        start = i
    yield clock, entries[start:], origins[start:] if origins else None


class OwnMessages:
    """The entries messages this process's predict stage made, by their bytes, until its own warm
    stage reads them back (a worker running both stages reads most of what it wrote): a message
    read whose bytes are those of one made here is the entries it was made from, so it is neither
    parsed nor checked again (``decode``). Half the warm stage's cost of taking a message in was
    parsing and checking entries this same code had just made. Bounded: messages another
    process's warm stage reads are never read here, and the oldest go past ``limit`` entries."""

    def __init__(self, limit: int = 200_000, owned: Callable[[int], bool] | None = None):
        """``owned``: whether this process's warm stage holds a warm partition now (None: every
        one), so messages for partitions another process reads are not kept at all."""
        self.limit = limit
        self.owned = owned
        self._made: dict[bytes, tuple] = {}
        self._entries = 0
        self._lock = threading.Lock()  # kept by the predict stage's batches, taken by the warm stage's
        self.taken = 0
        """Messages read back from here (not parsed)."""

    def keep(self, warm_partition: int, value: bytes, source_partition: int, clock: float, entries: list[tuple],
             origins: list[int] | None) -> bool:
        """Keep a message made for ``warm_partition`` (if this process reads it, and it has entries:
        a clock alone is cheap to parse, and its bytes repeat from batch to batch)."""
        if not entries or self.owned is not None and not self.owned(warm_partition):
            return False
        with self._lock:
            if value not in self._made:
                self._made[value] = (source_partition, clock, entries, origins)
                self._entries += len(entries)
            made = self._made
            while self._entries > self.limit and made:
                self._entries -= len(made.pop(next(iter(made)))[2])
        return True

    def take(self, value: bytes) -> tuple | None:
        """(source partition, clock, entries, origins) of a message made here, else None."""
        with self._lock:
            made = self._made.pop(value, None)
            if made is not None:
                self._entries -= len(made[2])
                self.taken += 1
            return made

    def __len__(self) -> int:
        return len(self._made)


def stream_of(source: int, origin: int | None, sources: int) -> int:
    """The sequence an entry belongs to: its source's own (``source``), or, for events ``source``
    applied for another partition (``origin``), one number per pair past every partition's."""
    if origin is None or origin == source:
        return source
    return sources * (1 + source) + origin


_INT_END = 2**63


def _int(v) -> bool:
    return type(v) is int and 0 <= v < _INT_END


def _bad(entry, why: str) -> Rejected:
    return Rejected("bad_entries", f"entry {str(entry)[:80]}: {why}")


def check_entry(entry, last: int, clock: float, earliest: float) -> int:
    """The entry's seq if it is a well-formed entry at or after ``last`` and within
    [``earliest``, ``clock``] in time; else ``Rejected`` naming what is wrong."""
    if type(entry) is not list or len(entry) < 3 or _LENGTH.get(entry[1]) != len(entry):
        raise _bad(entry, "not an entry")
    seq, kind, ts = entry[0], entry[1], entry[2]
    # _int and a track id's check spelled out: this runs for every entry the warm stage receives
    if not (type(seq) is int and 0 <= seq < _INT_END and seq >= last):
        raise _bad(entry, "sequence not a non-negative integer in order")
    if type(ts) not in (float, int) or not earliest <= ts <= clock:
        raise _bad(entry, "time not a number between the era's start and the message's clock")
    if kind == UPCOMING:
        track, scores = entry[3], entry[5]
        if not (type(track) is str and len(track) == TRACK_ID_LEN) or entry[4] not in _VARIANTS or type(
                scores) is not list or not scores or not all(
                s is None or type(s) in (float, int) and 0.0 <= s <= 1.0 for s in scores):
            raise _bad(entry, "needs a track id, a variant and scores in [0, 1] (or null)")
    elif not (type(user := entry[3]) is int and 0 <= user < _INT_END and type(session := entry[4]) is int
              and 0 <= session < _INT_END and type(play := entry[5]) is int and 0 <= play < _INT_END
              and type(track := entry[6]) is str and len(track) == TRACK_ID_LEN) or (
            entry[7] not in _VARIANTS if kind == PLAY else type(entry[7]) is not int or entry[7] not in (0, 1)):
        raise _bad(entry, "needs user, session and play number as integers, a track id and a "
                   + ("variant" if kind == PLAY else "label of 0 or 1"))
    return seq


def load_message(value: bytes | None, version: int, unknown: str) -> dict:
    """An internal topic's message as a JSON object of the ``version`` expected, or ``Rejected``
    (``unknown``: the reason for another version)."""
    if value is None:
        raise Rejected("empty_message")
    try:
        msg = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise Rejected("bad_json") from None
    if not isinstance(msg, dict) or msg.get("v") != version:
        raise Rejected(unknown, f"expected v={version}")
    return msg


def decode(value: bytes | None, sources: int | None = None, reference: float | None = None,
           window: TimeWindow = TimeWindow(), own: OwnMessages | None = None
           ) -> tuple[int, float, list, list[int] | None]:
    """(source partition, its clock, entries, each entry's origin (-1: the source's own; None:
    all are)), or ``Rejected`` saying what is wrong with it.
    ``sources``: the sessions topic's partitions (None: not checked); ``reference``: the message's
    Kafka timestamp, against which the clock may be at most ``window.max_ahead`` ahead; ``own``:
    the messages this process made (one found there is taken as made, its entries unchecked: they
    are the ones encoded into these very bytes, by the code whose output the checks below accept).
    The message's own fields are checked either way: they depend on ``reference``."""
    made = own.take(value) if own is not None and value is not None else None
    if made is None:
        msg = load_message(value, VERSION, "unknown_entries_version")
        src, clock, entries, origins = msg.get("src"), msg.get("t"), msg.get("e"), msg.get("o")
    else:
        src, clock, entries, origins = made
    if (not _int(src) or type(clock) not in (float, int) or not math.isfinite(clock)
            or type(entries) is not list):
        raise Rejected("bad_entries", "needs src (a partition), t (a time) and e (a list)")
    if sources is not None and src >= sources:
        raise Rejected("unknown_source", f"sessions partition {src}: the topic has {sources}")
    if origins is not None and (type(origins) is not list or len(origins) != len(entries) or not all(
            o == -1 or _int(o) and o != src and (sources is None or o < sources) for o in origins)):
        raise Rejected("unknown_source", "o: not an origin (-1 or another sessions partition) for each entry")
    if clock < window.earliest:
        raise Rejected("clock_before_era", f"t={clock}")
    if reference is not None and clock > reference + window.max_ahead:
        raise Rejected("clock_in_future", f"t={clock} is {clock - reference:,.0f} s past the message's timestamp")
    if len(entries) > MAX_ENTRIES:
        raise Rejected("bad_entries", f"{len(entries):,} entries in one message")
    if made is None:
        earliest = window.earliest
        if origins is None:
            last = -1
            for entry in entries:
                last = check_entry(entry, last, clock, earliest)
        else:  # each origin's sequences in order
            lasts: dict[int, int] = {}
            for entry, origin in zip(entries, origins):
                lasts[origin] = check_entry(entry, lasts.get(origin, -1), clock, earliest)
    return src, float(clock), entries, origins
