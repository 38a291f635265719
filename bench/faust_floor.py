"""Faust's own floor for the worker benchmark: an agent that does nothing with what it gets but
count it, on the same broker and topic, with the worker's consumer settings. Two ways:
``events``, faust as it comes (``take_events(1000, 0.2)``, one Event per record), and ``runs``,
the worker's batch delivery (``stream/worker/transport.py``: one message per fetched run of a
partition). Run by ``bench_worker.py --faust-floor`` as its own process:

    python bench/faust_floor.py <bootstrap> <topic> <partitions> <events> <out.json> <events|runs>"""
from __future__ import annotations

import sys
import tempfile
import time
import uuid
from pathlib import Path

import faust
import orjson

from _common import ROOT  # noqa: F401  (puts the project on sys.path)


def main() -> None:
    bootstrap, topic_name, partitions, total, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    mode = sys.argv[6] if len(sys.argv) > 6 else "events"
    app_id = f"faust-floor-{uuid.uuid4().hex[:6]}"
    app = faust.App(app_id, broker=f"kafka://{bootstrap}", datadir=str(Path(tempfile.gettempdir()) / app_id),
                    consumer_auto_offset_reset="earliest", topic_partitions=partitions, web_enabled=False,
                    stream_buffer_maxsize=4096 if mode == "events" else 16, broker_heartbeat_interval=2.0)
    if mode == "runs":
        from stream.worker.transport import Transport

        app.transport = Transport(app.conf.broker_consumer, app, fetch_max_wait_ms=50, positioned_topics={topic_name})
    topic = app.topic(topic_name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
                      partitions=partitions)
    seen = {"n": 0, "start": None}

    def count(n: int) -> None:
        if seen["start"] is None:
            seen["start"] = time.perf_counter()
        seen["n"] += n
        if seen["n"] >= total:
            Path(out).write_bytes(orjson.dumps({"rate": seen["n"] / (time.perf_counter() - seen["start"])}))
            # the benchmark kills this process once it reads the file (faust cannot stop
            # itself from inside one of its agents)

    if mode == "runs":
        @app.agent(topic)
        async def runs(stream):
            async for event in stream.events():
                count(len(event.value))
    else:
        @app.agent(topic)
        async def events(stream):
            async for batch in stream.take_events(1000, within=0.2):
                count(len(batch))

    sys.argv = [sys.argv[0], "worker", "-l", "error"]
    app.main()


if __name__ == "__main__":
    main()
