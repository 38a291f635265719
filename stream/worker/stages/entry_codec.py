"""The wire form of the predict stage's entries (``cache_warmer/entries.py``): one Kafka message
per (predict batch, warm partition), so the warm stage pays Kafka's and Faust's per-message cost
once per batch rather than once per play.

    {"v": 1, "src": <sessions partition>, "t": <event time of its batch's last event>,
     "e": [[seq, kind, ...], ...]}

``seq`` is the offset of the event in its sessions partition: with ``src`` it identifies what the
warm stage has applied (a predict batch replayed after a crash re-sends the same offsets). Every
predict batch sends one to every warm partition, entries or not: ``t`` is the source's clock,
from which the warm stage knows how far every source has come (``warm_runtime.py``)."""
from __future__ import annotations

import orjson

from cache_warmer.entries import PLAY, RESOLVED, UPCOMING
from models.rejections import Rejected

VERSION = 1
_LENGTH = {PLAY: 8, UPCOMING: 6, RESOLVED: 8}


def encode(source_partition: int, clock: float, entries: list[tuple]) -> bytes:
    return orjson.dumps({"v": VERSION, "src": source_partition, "t": clock, "e": entries})


def decode(value: bytes | None) -> tuple[int, float, list[list]]:
    """(source partition, its clock, entries), or ``Rejected`` saying what is wrong with it."""
    if value is None:
        raise Rejected("empty_message")
    try:
        msg = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise Rejected("bad_json") from None
    if not isinstance(msg, dict) or msg.get("v") != VERSION:
        raise Rejected("unknown_entries_version", f"expected v={VERSION}")
    src, clock, entries = msg.get("src"), msg.get("t"), msg.get("e")
    if (not isinstance(src, int) or src < 0 or not isinstance(clock, (int, float)) or isinstance(clock, bool)
            or not isinstance(entries, list)):
        raise Rejected("bad_entries", "needs src (a partition), t (a time) and e (a list)")
    last = -1
    for entry in entries:
        if (not isinstance(entry, list) or len(entry) < 2 or _LENGTH.get(entry[1]) != len(entry)
                or not isinstance(entry[0], int) or entry[0] < last):
            raise Rejected("bad_entries", f"entry {str(entry)[:80]} is not an entry in offset order")
        last = entry[0]
    return src, float(clock), entries
