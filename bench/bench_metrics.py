"""What scraping /metrics costs the worker: worker CPU seconds for the same replay without a
scraper, with a scrape every second and every 100 ms (Prometheus' default interval is 15 s).

Target (issue 5): scraping adds less than 5% to worker CPU.
Run: python bench/bench_metrics.py [--users 400]"""
from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

from _common import ROOT  # noqa: F401

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=400)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    from stream.cli import main as cli
    from stream.cli.jobs import load_replay
    from stream.producer import replay
    from stream.cli.services import Stack, create_topics, free_port, start_redis, start_tansu, start_worker, stop_process, wait_http
    from stream.settings import Settings
    from stream.bootstrap import build_store

    work = Path(tempfile.mkdtemp(prefix="skipcache-bench-metrics-"))
    from stream.synthetic import generate

    generate(work / "data", users=args.users, seed=5, profile="long", progress=False)
    cli(["train", "--data", str(work / "data"), "--out", str(work / "m.joblib"), "--train-fraction", "0.5"])
    events = load_replay(work / "data", progress=False)[1]
    stack = Stack()
    kafka = stack.add(start_tansu(workdir=work / "tansu"))
    redis = stack.add(start_redis(workdir=work / "redis"))
    results: dict[str, list[float]] = {}
    try:
        for _ in range(args.repeat):
            for label, interval in (("no scraping", None), ("scrape every 1 s", 1.0), ("scrape every 0.1 s", 0.1)):
                tag = uuid.uuid4().hex[:6]
                port = free_port()
                env = {"SKIPCACHE_APP_ID": f"m-{tag}", "SKIPCACHE_KAFKA": f"127.0.0.1:{kafka.port}",
                       "SKIPCACHE_REDIS": f"redis://127.0.0.1:{redis.port}/0", "SKIPCACHE_REDIS_PREFIX": tag,
                       "SKIPCACHE_MODEL": str(work / "m.joblib"), "SKIPCACHE_DATA": str(work / "data"),
                       "SKIPCACHE_PARTITIONS": "2", "SKIPCACHE_TOPIC_SESSIONS": f"s-{tag}",
                       "SKIPCACHE_TOPIC_REPARTITION": f"r-{tag}",
                       "SKIPCACHE_WEB_PORT": str(port)}
                st = Settings.from_env(env)
                create_topics(st.kafka_bootstrap, {**st.topics, st.topic_sessions: 2})
                worker = start_worker(env, work / f"worker-{tag}.log")
                wait_http(f"http://127.0.0.1:{port}/healthz", proc=worker)
                time.sleep(5)
                stop = threading.Event()
                scrapes = [0]

                def scrape() -> None:
                    while not stop.wait(interval):
                        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                            resp.read()
                        scrapes[0] += 1

                thread = threading.Thread(target=scrape, daemon=True) if interval else None
                before = cpu_seconds(worker.pid)
                if thread:
                    thread.start()
                replay(events, st.kafka_bootstrap, st.topic_sessions, progress=False)
                store = build_store(st)
                while store.offset(0) + store.offset(1) < len(events):
                    time.sleep(0.1)
                used = cpu_seconds(worker.pid) - before
                stop.set()
                if thread:
                    thread.join()
                stop_process(worker, 20)
                results.setdefault(label, []).append(used)
                print(f"{label:<20} worker CPU {used:6.2f} s for {len(events):,} events ({scrapes[0]} scrapes)")
    finally:
        stack.stop()
    base = min(results["no scraping"])
    for label, values in results.items():
        best = min(values)
        print(f"{label:<20} best of {len(values)}: {best:6.2f} s  ({(best / base - 1) * 100:+.1f}% vs no scraping)")


if __name__ == "__main__":
    main()
