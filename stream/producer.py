"""`skipcache replay`: send an export's events to Kafka in global time order, keyed by user, with
``next_track_id`` filled and session ends marked (the same replay order the simulation uses)."""
from __future__ import annotations

import time
from dataclasses import dataclass

import orjson
from tqdm import tqdm

from models.events import Event

from stream.kafka_io import user_key


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
                         retries=5, request_timeout_ms=30_000)


def replay(events: list[Event], bootstrap: str, topic: str, speed: float | None = None, limit: int | None = None,
           rejected: int = 0, progress: bool = True, producer=None) -> ReplaySummary:
    """``speed``: None sends as fast as possible; X sends at X times the pace of event time."""
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
            producer.send(topic, key=user_key(e.user_id), value=dumps(e.to_json()))
        producer.flush()
    finally:
        if own:
            producer.close()
    return ReplaySummary(len(events), rejected, time.perf_counter() - started)
