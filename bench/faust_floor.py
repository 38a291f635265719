"""Faust's own floor for the worker benchmark: an agent that does nothing with its batches but
count them, on the same broker and topic, with the worker's consumer settings. Run by
``bench_worker.py --faust-floor`` as its own process:

    python bench/faust_floor.py <bootstrap> <topic> <partitions> <events> <out.json>"""
from __future__ import annotations

import sys
import tempfile
import time
import uuid
from pathlib import Path

import faust
import orjson


def main() -> None:
    bootstrap, topic_name, partitions, total, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    app_id = f"faust-floor-{uuid.uuid4().hex[:6]}"
    app = faust.App(app_id, broker=f"kafka://{bootstrap}", datadir=str(Path(tempfile.gettempdir()) / app_id),
                    consumer_auto_offset_reset="earliest", topic_partitions=partitions, web_enabled=False,
                    stream_buffer_maxsize=4096, broker_heartbeat_interval=2.0)
    topic = app.topic(topic_name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
                      partitions=partitions)
    seen = {"n": 0, "start": None}

    @app.agent(topic)
    async def count(stream):
        async for batch in stream.take_events(1000, within=0.2):
            if seen["start"] is None:
                seen["start"] = time.perf_counter()
            seen["n"] += len(batch)
            if seen["n"] >= total:
                Path(out).write_bytes(orjson.dumps({"rate": seen["n"] / (time.perf_counter() - seen["start"])}))
                # the benchmark kills this process once it reads the file (faust cannot stop
                # itself from inside one of its agents)

    sys.argv = [sys.argv[0], "worker", "-l", "error"]
    app.main()


if __name__ == "__main__":
    main()
