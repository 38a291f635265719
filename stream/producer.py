"""Sending session events to Kafka. `skipcache replay`: an export's events in global time order,
keyed by user, with ``next_track_id`` filled and session ends marked (the same replay order the
simulation uses). `skipcache produce`: a service's JSON lines, checked against the event contract
(``models/session_event.schema.json``) and keyed by user, sent as they are."""
from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import orjson
from tqdm import tqdm

from models.events import PLAY, Event
from models.parsing import TimeWindow, decode_event
from models.rejections import Rejected, Rejections

from stream.kafka_io import client_config, user_key


@dataclass
class ReplaySummary:
    sent: int
    rejected: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else float("nan")

    def render(self) -> str:
        return (f"sent {self.sent:,} events ({self.rejected:,} lines rejected while reading) in "
                f"{self.seconds:.1f} s: {self.rate:,.0f} events/s")


def make_producer(bootstrap: str):
    from kafka import KafkaProducer

    # acks=1 and no idempotence: a replay is a test load, and Tansu's producer-id support is young
    return KafkaProducer(bootstrap_servers=bootstrap, acks=1, enable_idempotence=False, linger_ms=20, batch_size=256 * 1024,
                         max_in_flight_requests_per_connection=1,  # keep per-partition order on retries
                         retries=5, request_timeout_ms=30_000, **client_config())


def replay(events: list[Event], bootstrap: str, topic: str, speed: float | None = None, limit: int | None = None,
           rejected: int = 0, progress: bool = True, producer=None, key: str = "user") -> ReplaySummary:
    """``speed``: None sends as fast as possible; X sends at X times the pace of event time.
    ``key``: as ``produce`` keys (the user; or, to try them, the session or none)."""
    if limit is not None:
        events = events[:limit]
    own = producer is None
    producer = producer or make_producer(bootstrap)
    dumps = orjson.dumps
    started = time.perf_counter()
    t0 = events[0].ts if events else 0.0
    try:
        for e in tqdm(events, desc="replay", unit=" events", unit_scale=True, disable=None if progress else True,
                      leave=False, mininterval=0.5):
            if speed:
                ahead = (e.ts - t0) / speed - (time.perf_counter() - started)
                if ahead > 0:
                    time.sleep(ahead)
            producer.send(topic, key=message_key(e, key), value=dumps(e.to_json()))
        producer.flush()
    finally:
        if own:
            producer.close()
    return ReplaySummary(len(events), rejected, time.perf_counter() - started)


KEYS = ("user", "session", "none")
"""How ``produce`` keys its messages: by user (the contract), or, to try what the worker does
with a producer that gets it wrong, by session or not at all."""


@dataclass
class ProduceSummary:
    sent: int = 0
    plays_without_upcoming: int = 0
    seconds: float = 0.0
    rejections: Rejections = field(default_factory=Rejections)

    def render(self) -> str:
        rate = self.sent / self.seconds if self.seconds else float("nan")
        lines = [f"sent {self.sent:,} events in {self.seconds:.1f} s ({rate:,.0f} events/s), "
                 f"rejected {self.rejections.total:,}"]
        for reason, info in self.rejections.as_dict().items():
            lines.append(f"  {reason}: {info['count']:,}  e.g. {info['example']}")
        if self.plays_without_upcoming:
            lines.append(f"{self.plays_without_upcoming:,} plays carry no next_track_id: the worker scores only the "
                         "playing track for them (see README, Producing session events)")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"sent": self.sent, "plays_without_upcoming": self.plays_without_upcoming, "seconds": self.seconds,
                "rejected": self.rejections.as_dict()}


def message_key(event: Event, key: str) -> bytes | None:
    if key == "user":
        return user_key(event.user_id)
    if key == "session":
        return str(event.session_id).encode()
    return None


def produce(lines: Iterable[bytes], producer, topic: str, key: str = "user", window: TimeWindow = TimeWindow(),
            progress: bool = False) -> ProduceSummary:
    """Each non-blank line checked as the worker will check it (the contract's parser and the
    time window), and sent as written, keyed by ``key``; a line that fails is counted by reason
    with an example, and not sent."""
    if key not in KEYS:
        raise ValueError(f"key must be one of {KEYS}")
    out = ProduceSummary()
    started = time.perf_counter()
    for raw in tqdm(lines, desc="produce", unit=" lines", unit_scale=True, disable=None if progress else True,
                    leave=False, mininterval=0.5):
        raw = raw.strip()
        if not raw:
            continue
        try:
            event = window.check(decode_event(raw), time.time())
        except Rejected as r:
            out.rejections.add(r.reason, raw)
            continue
        if event.kind == PLAY and event.next_track_id is None:
            out.plays_without_upcoming += 1
        producer.send(topic, key=message_key(event, key), value=raw)
        out.sent += 1
    producer.flush()
    out.seconds = time.perf_counter() - started
    return out
