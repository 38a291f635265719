"""The wire form of the repartition topic (``SKIPCACHE_TOPIC_REPARTITION``): session events a
sessions partition received for users whose state lives in another partition (a producer that
keyed by session, by device or not at all), forwarded to that partition's predict stage.

    {"v": 1, "src": <sessions partition>, "t": <event time it has read up to>,
     "done": <it had read all the broker held>, "e": [[offset, <the event as produced>], ...],
     "w": <the sending worker>, "n": <its count of messages from src to this partition>}

A sessions partition sends one to every other partition for each run of records it receives,
forwarding or not: ``t`` is how far it has read, so a partition waiting for forwarded events
knows when every event up to a time has arrived (``predict.py``), as the warm stage knows its
sources' clocks. ``offset`` is the event's offset in ``src``: with ``src`` it identifies the
event, so a partition re-read after a crash, which forwards the same events again, is deduplicated
where they arrive. The event is forwarded as its producer wrote it and checked again there
against the contract: anything can be produced to this topic too. ``w`` and ``n`` let a partition
in the same worker as its source hear the source's later clocks without the trip through Kafka,
once it has received every message of that worker's that carried events for it
(``service.py``)."""
from __future__ import annotations

import math

import orjson

from models.parsing import TimeWindow, parse_event
from models.rejections import Rejected
from stream.worker.stages.entry_codec import load_message

VERSION = 1
MAX_FORWARDED = 200_000
"""Events one message may carry (a fetched run is far smaller)."""


def encode(source: int, clock: float, done: bool, events: list[tuple[int, bytes]],
           stamp: tuple[str, int] | None = None) -> bytes:
    msg = {"v": VERSION, "src": source, "t": clock if math.isfinite(clock) else None, "done": done,
           "e": [[offset, orjson.Fragment(value)] for offset, value in events]}
    if stamp is not None:
        msg["w"], msg["n"] = stamp
    return orjson.dumps(msg)


def _int(v) -> bool:
    return type(v) is int and 0 <= v < 2**63


def decode(value: bytes | None, sources: int, reference: float | None = None,
           window: TimeWindow = TimeWindow()) -> tuple[int, float, bool, list[tuple[int, object, object]]]:
    """(source partition, its clock (-inf: it has read no event yet), done, [(offset, Event or
    Rejected)]), or ``Rejected`` saying what is wrong with the message. ``reference``: the
    message's Kafka timestamp (the events' times are checked against it, as on the sessions
    topic)."""
    msg = load_message(value, VERSION, "unknown_repartition_version")
    src, clock, done, events = msg.get("src"), msg.get("t"), msg.get("done"), msg.get("e")
    if (not _int(src) or clock is not None and (type(clock) not in (float, int) or not math.isfinite(clock))
            or type(done) is not bool or type(events) is not list):
        raise Rejected("bad_forwarded", "needs src (a partition), t (a time or null), done (a boolean), e (a list)")
    if src >= sources:
        raise Rejected("unknown_source", f"sessions partition {src}: the topic has {sources}")
    stamp = None
    if "w" in msg or "n" in msg:
        if type(msg.get("w")) is not str or len(msg["w"]) > 64 or not _int(msg.get("n")):
            raise Rejected("bad_forwarded", "w (a worker) and n (a count) go together")
        stamp = (msg["w"], msg["n"])
    clock = -math.inf if clock is None else float(clock)
    if clock > -math.inf and reference is not None and clock > reference + window.max_ahead:
        raise Rejected("clock_in_future", f"t={clock} is {clock - reference:,.0f} s past the message's timestamp")
    if len(events) > MAX_FORWARDED:
        raise Rejected("bad_forwarded", f"{len(events):,} events in one message")
    out: list[tuple[int, object, object]] = []
    last = -1
    check, wall = window.check, reference
    for item in events:
        if type(item) is not list or len(item) != 2 or not _int(item[0]) or item[0] <= last:
            raise Rejected("bad_forwarded", f"item {str(item)[:80]}: not [offset, event] in offset order")
        last = item[0]
        try:
            event = check(parse_event(item[1]), wall) if wall is not None else parse_event(item[1])
            if event.ts > clock:
                raise Rejected("bad_forwarded", f"event at {event.ts} after the message's clock {clock}")
        except Rejected as r:
            event = r
        out.append((item[0], event, item[1]))
    return src, clock, done, out, stamp
