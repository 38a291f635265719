"""POST /predict under load (issue 17): 200 concurrent callers against one worker (Tansu and
Redis of its own), p50/p99 and requests/s, with the stream idle and while it drains a backlog;
and the worker's events/s draining equal backlogs with and without that load, in the same run.
The raw baseline, same run: one caller alone (sequential requests), and the drain with no callers.

Target: p99 under 200 ms for 200 concurrent callers; the stream slowed by no more than the
requests' own cost.
Run: python bench/bench_predict_api.py [--users 600] [--callers 200] [--seconds 10]"""
from __future__ import annotations

import argparse
import shutil
import asyncio
import random
import threading
import time
import uuid
from pathlib import Path

from _common import ROOT, trained_replay, worker_env  # noqa: F401  (ROOT puts the project on sys.path)


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def callers(url: str, pairs: list[tuple[int, str]], n: int, seconds: float) -> tuple[list[float], int]:
    """``n`` callers, each posting one request after another for ``seconds``: latencies (s), errors."""
    import aiohttp
    import orjson

    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    rng = random.Random(3)

    async def caller(session) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            user, track = rng.choice(pairs)
            started = time.perf_counter()
            async with session.post(url, data=orjson.dumps({"user_id": user, "track_id": track})) as resp:
                await resp.read()
                if resp.status != 200:
                    errors += 1
            latencies.append(time.perf_counter() - started)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=n)) as session:
        await asyncio.gather(*(caller(session) for _ in range(n)))
    return latencies, errors


def load(url: str, pairs, n: int, seconds: float) -> dict:
    started = time.perf_counter()
    lat, errors = asyncio.run(callers(url, pairs, n, seconds))
    took = time.perf_counter() - started
    return {"p50": percentile(lat, 0.5) * 1000, "p99": percentile(lat, 0.99) * 1000, "rate": len(lat) / took,
            "n": len(lat), "errors": errors}


def wrk_load(url: str, pairs, n: int, seconds: float, work: Path) -> dict | None:
    """The same load from wrk (a C load generator, `apt-get install wrk`), when it is installed:
    the Python callers above cost about as much CPU as the worker serving them, on the same two
    cores, so wrk's figures are closer to the server's own."""
    import re
    import shutil
    import subprocess

    import orjson

    if shutil.which("wrk") is None:
        return None
    bodies = [orjson.dumps({"user_id": u, "track_id": t}).decode() for u, t in pairs[:2000]]
    script = work / "predict.lua"
    script.write_text("bodies = {" + ",".join("[[" + b + "]]" for b in bodies) + "}\n"
                      "wrk.method = 'POST'\nwrk.headers['Content-Type'] = 'application/json'\n"
                      "request = function() return wrk.format(nil, nil, nil, bodies[math.random(#bodies)]) end\n")
    out = subprocess.run(["wrk", "-t1", f"-c{n}", f"-d{seconds:.0f}s", "--latency", "--timeout", "10s", "-s", str(script),
                          url], capture_output=True, text=True, timeout=seconds + 60).stdout

    def ms(label: str) -> float:
        value, unit = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"p50": ms("50%"), "p99": ms("99%"), "rate": rate, "n": int(rate * seconds),
            "errors": int(errors.group(1)) if errors else 0}


def paced(events, st, rate: float) -> None:
    """Produce ``events`` at a steady ``rate`` per second, as live traffic comes."""
    import orjson

    from stream.kafka_io import user_key
    from stream.producer import make_producer

    producer = make_producer(st.kafka_bootstrap)
    start = time.perf_counter()
    for i, e in enumerate(events):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        producer.send(st.topic_sessions, key=user_key(e.user_id), value=orjson.dumps(e.to_json()))
    producer.flush()
    producer.close()


def drain(store, partitions: int, target: int) -> float:
    """Seconds until the predict stage has applied ``target`` events (polling Redis)."""
    started = time.perf_counter()
    while sum(store.offset(p) for p in range(partitions)) < target:
        time.sleep(0.02)
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=600)
    ap.add_argument("--callers", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--profile", type=Path, default=None, help="py-spy the worker while 200 callers load the idle stream")
    args = ap.parse_args()
    from bench_worker import print_profile, start_profile
    from stream.bootstrap import build_store
    from stream.cli.services import Stack, start_redis, start_tansu, start_worker, stop_process, wait_http
    from stream.producer import replay

    work, _, events = trained_replay("skipcache-bench-predict-", args.users)
    third = len(events) // 5  # warm-up, a drain without callers, one with, then steady streams
    stack = Stack()
    kafka = stack.add(start_tansu(workdir=work / "tansu"))
    redis = stack.add(start_redis(workdir=work / "redis"))
    worker = None
    try:
        st, env = worker_env(uuid.uuid4().hex[:6], kafka.port, redis.port, work, 2)
        port = st.web_port
        store = build_store(st)
        worker = start_worker(env, work / "worker.log")
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=worker)
        replay(events[:third], st.kafka_bootstrap, st.topic_sessions, progress=False)
        drain(store, 2, third)
        pairs = [(e.user_id, e.track_id) for e in events[:third] if e.track_id][::7]
        url = f"http://127.0.0.1:{port}/predict"
        print(f"{len(events):,} events ({args.users} users); a fifth applied before the load; "
              f"{len(pairs):,} (user, track) pairs asked about")

        alone = load(url, pairs, 1, 3.0)
        print(f"one caller alone (raw):             p50 {alone['p50']:6.1f} ms  p99 {alone['p99']:6.1f} ms  "
              f"{alone['rate']:7,.0f} req/s")
        by_wrk = wrk_load(url, pairs, args.callers, args.seconds, work)
        if by_wrk is not None:
            print(f"{args.callers} connections from wrk, idle: p50 {by_wrk['p50']:6.1f} ms  p99 {by_wrk['p99']:6.1f} ms  "
                  f"{by_wrk['rate']:7,.0f} req/s  ({by_wrk['errors']} errors)")
        spy = start_profile(worker.pid, args.profile) if args.profile else None
        idle = load(url, pairs, args.callers, args.seconds)
        if spy is not None:
            print_profile(spy, args.profile, top=30)
        print(f"{args.callers} callers, stream idle:        p50 {idle['p50']:6.1f} ms  p99 {idle['p99']:6.1f} ms  "
              f"{idle['rate']:7,.0f} req/s  ({idle['n']:,} requests, {idle['errors']} errors)")

        started = time.perf_counter()  # the worker reads as the backlog is produced, far slower than it
        replay(events[third:2 * third], st.kafka_bootstrap, st.topic_sessions, progress=False)
        drain(store, 2, 2 * third)
        quiet = third / (time.perf_counter() - started)
        print(f"worker draining {third:,} events, no callers (raw): {quiet:8,.0f} events/s")

        result: dict = {}
        t = threading.Thread(target=lambda: result.update(load(url, pairs, args.callers, args.seconds)))
        t.start()
        started = time.perf_counter()
        replay(events[2 * third:3 * third], st.kafka_bootstrap, st.topic_sessions, progress=False)
        drain(store, 2, 3 * third)
        busy = third / (time.perf_counter() - started)
        t.join()
        print(f"worker draining {third:,} events, {args.callers} callers:  {busy:8,.0f} events/s  "
              f"({busy / quiet:.2f}x the rate without callers)")
        print(f"{args.callers} callers, stream draining:    p50 {result['p50']:6.1f} ms  p99 {result['p99']:6.1f} ms  "
              f"{result['rate']:7,.0f} req/s  ({result['n']:,} requests, {result['errors']} errors)")

        sent = 3 * third
        for name, rate in (("callers", 2000.0), ("wrk", 2000.0)):
            if name == "wrk" and by_wrk is None:
                continue
            n = min(len(events) - sent, int(rate * args.seconds))
            result = {}
            run = (lambda: load(url, pairs, args.callers, args.seconds)) if name == "callers" else (
                lambda: wrk_load(url, pairs, args.callers, args.seconds, work))
            t = threading.Thread(target=lambda: result.update(run()))
            t.start()
            paced(events[sent:sent + n], st, rate)
            t.join()
            sent += n
            behind = sent - sum(store.offset(p) for p in range(2))
            who = f"{args.callers} callers" if name == "callers" else f"{args.callers} connections from wrk"
            print(f"{who}, stream at {rate:,.0f} ev/s: p50 {result['p50']:6.1f} ms  p99 {result['p99']:6.1f} ms  "
                  f"{result['rate']:7,.0f} req/s  ({result['errors']} errors); "
                  f"{behind:,} events not applied when the paced stream ended")
            drain(store, 2, sent)
    finally:
        if worker is not None:
            stop_process(worker, 20)
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
