"""Live worker throughput through Tansu and Redis on this machine, beside raw aiokafka consume
throughput from the same broker in the same run, and produce-to-cache-command latency at a steady
2,000 events/s. The worker runs both stages (predict on 2 sessions partitions, warm on 2 entries
partitions): its rate counts until the predict stage applied every event, and, end to end, until
the warm stage applied every entry of every predict batch.

Targets (issues 4 and 11): >= 10,000 events/s per worker process; aim for 20,000. Issue 16: one
process >= 30,000 events/s end to end and >= 0.08x raw; two processes >= 1.7x one (``--workers 1,2``:
both in one run, beside what two busy Python processes get done at once on this machine).
A single run moves by up to ±10% from the next on this machine kind: ``--repeat N`` gives medians.
Run: python bench/bench_worker.py [--users 800] [--workers 1,2 --users 2000] [--repeat N] (KEEP_WORK=1 keeps the work folder: the workers' logs)"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shutil
import statistics
import subprocess
import threading
import time
import uuid
from pathlib import Path

import orjson

from _common import ROOT, trained_replay, worker_env  # noqa: F401  (ROOT puts the project on sys.path)


def raw_consume_rate(bootstrap: str, topic: str, total: int) -> float:
    from aiokafka import AIOKafkaConsumer

    async def run() -> float:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                    enable_auto_commit=False, group_id=None)
        await consumer.start()
        n = 0
        started = None
        try:
            while n < total:
                batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
                for records in batch.values():
                    if started is None:
                        started = time.perf_counter()
                    n += len(records)
        finally:
            await consumer.stop()
        return n / (time.perf_counter() - started)

    return asyncio.run(run())


def faust_floor_rate(bootstrap: str, topic: str, partitions: int, total: int, work: Path, mode: str) -> float:
    """What faust itself costs: ``faust_floor.py`` in its own process, as the worker runs;
    ``mode``: ``events`` (faust's own delivery) or ``runs`` (the worker's batch delivery)."""
    import sys

    out = work / f"faust-floor-{mode}.json"
    with open(work / f"faust-floor-{mode}.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("faust_floor.py")), bootstrap, topic,
                                 str(partitions), str(total), str(out), mode], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while not out.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the faust floor run gave no figure; see {work / 'faust-floor.log'}")
            time.sleep(0.2)
        time.sleep(0.2)  # written whole
        return orjson.loads(out.read_bytes())["rate"]
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=800)
    ap.add_argument("--latency-seconds", type=float, default=20.0)
    ap.add_argument("--latency-rate", type=float, default=2000.0, help="events/s the latency run produces")
    ap.add_argument("--batch-size", type=int, default=None, help="SKIPCACHE_BATCH_SIZE for the throughput run")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--latency-within", default="0.05", help="SKIPCACHE_BATCH_WITHIN for the latency run")
    ap.add_argument("--latency-fetch-wait", default=None, help="SKIPCACHE_FETCH_MAX_WAIT_MS for the latency run")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--workers", type=_counts, default=[1], metavar="N[,N...]",
                    help="worker processes in the group (2 partitions); several (1,2): each in turn, same run, "
                         "and each count's end-to-end rate as a multiple of the first's")
    ap.add_argument("--repeat", type=int, default=1, metavar="N",
                    help="throughput runs per worker count, the counts taking turns (each on a topic of its own, "
                         "raw aiokafka in each): each run's rate and ratio, then the medians, which are compared")
    ap.add_argument("--partitions", type=int, default=2, help="sessions and entries partitions")
    ap.add_argument("--clean-runs", type=int, default=0,
                    help="instead: replay the same events this many times through one worker and compare the figures")
    ap.add_argument("--redis-cluster", type=int, default=0, metavar="N",
                    help="also run the throughput with the state on a local cluster of N primaries (+ replicas)")
    ap.add_argument("--faust-floor", action="store_true", help="also time a do-nothing faust agent on the topic")
    ap.add_argument("--key", choices=("user", "session", "none"), default="user",
                    help="how the throughput run's events are keyed (not by user: every partition forwards the "
                         "events of the others' users through the repartition topic)")
    ap.add_argument("--profile", type=Path, default=None,
                    help="py-spy the (first) worker process during the throughput run; collapsed stacks to this file")
    args = ap.parse_args()
    from stream.cli.services import Stack, start_redis, start_tansu

    work, catalogue, events = trained_replay("skipcache-bench-worker-", args.users)
    stack = Stack()
    kafka = stack.add(start_tansu(workdir=work / "tansu"))
    redis = stack.add(start_redis(workdir=work / "redis"))
    brokers = itertools.count(1)

    def fresh_servers():
        """A broker of its own and an empty Redis for the next measured run. Tansu keeps every
        topic in memory, and with each earlier run's ~800,000 events in it, it served a run slower
        (two-process runs in one broker: 1.6, 1.7, 2.9 µs of its CPU per event; raw aiokafka 466k,
        472k, 398k), so whichever count ran later was measured against a slower broker. Redis
        likewise: each run's keys have a prefix of their own, and with the earlier runs' state in
        it the server spent more per event on each later run (five one-process runs: 1.2, 1.6,
        1.7, 1.8, 2.0 µs)."""
        import redis as redis_py

        nonlocal kafka
        kafka.stop()
        stack.services.remove(kafka)
        kafka = stack.add(start_tansu(workdir=work / f"tansu-{next(brokers)}"))
        with redis_py.Redis(port=redis.port) as r:
            r.flushall()

    try:
        def settings_for(tag: str, **extra):
            return worker_env(tag, kafka.port, redis.port, work, args.partitions, **extra)

        if args.clean_runs:
            clean_runs(args, catalogue, events, settings_for, work)
            return
        if not args.skip_throughput:
            runs: dict[int, list[tuple[float, float]]] = {n: [] for n in args.workers}
            for i in range(args.repeat):  # the counts take turns: a machine that drifts moves all alike
                for j, n in enumerate(args.workers):
                    if i or j:
                        fresh_servers()
                    servers = {"broker (Tansu)": kafka.proc.pid, "Redis-protocol server": redis.proc.pid}
                    runs[n].append(throughput(args, events, settings_for, work, servers=servers, workers_n=n))
            rates = {n: statistics.median(rate for rate, _ in got) for n, got in runs.items()}
            if args.repeat > 1:
                for n, got in runs.items():
                    print(f"{n} process(es), {len(got)} runs, end to end: "
                          + ", ".join(f"{rate:,.0f} ({rate / raw:.3f}x raw)" for rate, raw in got)
                          + f"; median {rates[n]:,.0f} events/s, {statistics.median(r / w for r, w in got):.3f}x raw")
            single = rates[args.workers[0]]
            if len(rates) > 1:
                print(", ".join(f"{n} process(es): {rate:,.0f} events/s end to end ({rate / single:.3f}x)"
                                for n, rate in rates.items())
                      + f" -- same run{', medians' if args.repeat > 1 else ''}, against {args.workers[0]}")
                print("this machine, busy Python processes at once (same run): " + ", ".join(
                    f"{n}: {machine_scaling(n):.2f}x one alone" for n in args.workers if n > 1))
            if args.redis_cluster:
                from stream.cli.services import start_redis_cluster

                cluster = stack.add(start_redis_cluster(args.redis_cluster, 1, workdir=work / "cluster"))
                fresh_servers()
                on_cluster, _ = throughput(args, events, settings_for, work, cluster.url)
                print(f"on a {args.redis_cluster}-primary cluster (+ replicas): {on_cluster:,.0f} events/s end to end, "
                      f"{on_cluster / single:.2f}x one server's {single:,.0f} in the same run")
        if args.skip_latency:
            return
        if not args.skip_throughput:
            fresh_servers()
        latency(args, events, settings_for, work)
    finally:
        stack.stop()
        if os.environ.get("KEEP_WORK"):  # the workers' logs, for a look afterwards
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)  # the export, the model, the servers' data: ~100 MB a run


_BUSY = """
import random, time
rnd = random.Random(1)
d = {i: [0.0] * 12 for i in range(1_000_000)}
keys = [rnd.randrange(1_000_000) for _ in range(2_500_000)]
t = time.perf_counter()
for k in keys:
    r = d[k]
    r[0] += 1.0
    r[3] = r[0] * 0.5
print(time.perf_counter() - t)
"""


def machine_scaling(n: int) -> float:
    """What ``n`` busy Python processes at once get done on this machine, as a multiple of one
    alone (a dict-heavy loop over a few hundred MB, like the worker's state): the ceiling, in the
    same run, for ``n`` workers' rate against one's."""
    import sys

    def run(k: int) -> list[float]:
        procs = [subprocess.Popen([sys.executable, "-c", _BUSY], stdout=subprocess.PIPE, text=True) for _ in range(k)]
        return [float(p.communicate()[0]) for p in procs]

    alone = min(run(1)[0] for _ in range(2))  # the faster of two: the ceiling is not flattered
    return sum(alone / t for t in run(n))


def _counts(text: str) -> list[int]:
    counts = [int(x) for x in text.split(",")]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("worker counts are positive integers, e.g. 1,2")
    return counts


def throughput(args, events, settings_for, work: Path, redis_url: str | None = None,
               servers: dict[str, int] | None = None, workers_n: int = 1) -> tuple[float, float]:
    """The topic is full before the worker starts: events/s until both stages applied it all,
    and raw aiokafka's on the same topic (returned). ``redis_url``: the state elsewhere than the
    benchmark's one server (a cluster)."""
    from models.events import Catalogue
    from stream.bootstrap import build_store
    from stream.cli.jobs import live_figures
    from stream.producer import replay
    from stream.cli.services import free_port, start_worker, stop_process, wait_http

    st, env = settings_for(uuid.uuid4().hex[:6], **({"SKIPCACHE_BATCH_SIZE": str(args.batch_size)}
                                                    if args.batch_size else {}),
                           **({"SKIPCACHE_REDIS": redis_url} if redis_url else {}))
    print(f"state on {redis_url or 'one Redis-protocol server'}")
    summary = replay(events, st.kafka_bootstrap, st.topic_sessions, progress=False, key=args.key)
    print(f"events: {len(events):,} ({args.users} users, long profile), keyed by {args.key}; produced at "
          f"{summary.rate:,.0f} events/s (kafka-python, acks=1)")
    broker = (servers or {}).get("broker (Tansu)")
    before = cpu_seconds(broker) if broker else 0.0
    raw = raw_consume_rate(st.kafka_bootstrap, st.topic_sessions, len(events))
    served = f"; the broker's CPU {1e6 * (cpu_seconds(broker) - before) / len(events):.1f} µs per event" if broker else ""
    print(f"raw aiokafka consume, same broker and topic:     {raw:>10,.0f} events/s{served}")
    if args.faust_floor:
        floor = faust_floor_rate(st.kafka_bootstrap, st.topic_sessions, st.partitions, len(events), work, "events")
        print(f"a do-nothing faust agent, take_events(1000, 0.2): {floor:>10,.0f} events/s  ({floor / raw:.3f}x raw consume)")
        floor = faust_floor_rate(st.kafka_bootstrap, st.topic_sessions, st.partitions, len(events), work, "runs")
        print(f"a do-nothing faust agent, batch delivery (runs):  {floor:>10,.0f} events/s  ({floor / raw:.3f}x raw consume)")
    store = build_store(st)
    if redis_url is None:
        store.r.config_resetstat()  # the commandstats printed below are this run's
    workers, ports = [], []
    try:
        for i in range(workers_n):  # started together, so they join the group together
            port = free_port()
            ports.append(port)
            workers.append(start_worker({**env, "SKIPCACHE_WEB_PORT": str(port)}, work / f"worker-throughput-{i}.log"))
        for port, w in zip(ports, workers):
            wait_http(f"http://127.0.0.1:{port}/healthz", proc=w)
        if workers_n > 1:  # measured once every worker owns predict partitions (each consumes alone till then)
            settled = group_settled(ports, st.partitions)
            print(f"group settled: every worker owns predict partitions {settled:.1f} s after all were ready")
        profile = args.profile
        if profile is not None and len(args.workers) > 1:  # one file per count
            profile = profile.with_name(f"{profile.stem}-{workers_n}{profile.suffix}")
        spy = start_profile(workers[0].pid, profile) if profile else None
        first = None
        while True:
            applied = sum(store.offset(p) for p in range(st.partitions))
            now = time.perf_counter()
            if applied and first is None:
                first = (now, applied)
                cpu_first = [cpu_seconds(w.pid) for w in workers]
                gc_first = gc_collections(ports[0])
                sys_first = [cpu_seconds(w.pid, system_only=True) for w in workers]
                servers_first = {name: cpu_seconds(pid) for name, pid in (servers or {}).items()}
                idle_first = machine_idle()
            if applied >= len(events):
                break
            time.sleep(0.05)
        predicted = now
        while not live_figures(st, store, Catalogue())["warm_caught_up"]:
            time.sleep(0.05)
        warmed = time.perf_counter()
        cpu = sum(cpu_seconds(w.pid) for w in workers) - sum(cpu_first)
        system = sum(cpu_seconds(w.pid, system_only=True) for w in workers) - sum(sys_first)
        peak = max(peak_rss(w.pid) for w in workers)
        servers_cpu = {name: cpu_seconds(pid) - servers_first[name] for name, pid in (servers or {}).items()}
        idle = [b - a for a, b in zip(idle_first, machine_idle())]
        if spy is not None:
            print_profile(spy, profile)
        if applied - first[1] < len(events) // 10:  # the rate would be of a few batches, or a division by zero
            raise SystemExit(f"only {len(events) - first[1]:,} of {len(events):,} events were left when the measurement "
                             f"began (the workers consume while the group settles): use more --users")
        commands = store.r.info("commandstats") if redis_url is None else {}
        fig = live_figures(st, store, Catalogue())
        rate = (applied - first[1]) / (predicted - first[0])
        end_to_end = (applied - first[1]) / (warmed - first[0])
        print(f"skipcache worker, {workers_n} process(es), batch {st.batch_size}, both stages:")
        print(f"  predict stage applied every event:              {rate:>10,.0f} events/s  ({rate / raw:.3f}x raw consume)")
        print(f"  warm stage applied every entry (end to end):    {end_to_end:>10,.0f} events/s  "
              f"({end_to_end / raw:.3f}x raw consume; the warm stage finished {warmed - predicted:.1f} s after predict)")
        print(f"  per process:                                    {end_to_end / workers_n:>10,.0f} events/s; "
              f"{fig['plays']:,} plays placed, {fig['promotions']:,} promotions, "
              f"{fig['warm_late_entries']} entries applied out of event-time order")
        print(f"  worker CPU (user + system, every process):      {1e6 * cpu / (applied - first[1]):>10.1f} µs per event "
              f"({cpu / (warmed - first[0]) / workers_n:.0%} of a core per process over the run; "
              f"{1e6 * system / (applied - first[1]):.1f} µs of it in the kernel)")
        print(f"  worker peak memory (VmHWM, largest process):    {peak / 2**20:>10,.0f} MiB")
        for name, seconds in servers_cpu.items():  # the machine's other tenants: two workers share its cores with them
            print(f"  {name} CPU, same run:{' ' * (33 - len(name))}{1e6 * seconds / (applied - first[1]):>10.1f} µs per event "
                  f"({seconds / (warmed - first[0]):.0%} of a core)")
        print(f"  machine idle over the run (every core):         {idle[0] / idle[1]:>10.0%} of {os.cpu_count()} cores' time")
        if commands:  # where the server's time went: the commands by their time inside it
            top = sorted(commands.items(), key=lambda kv: -kv[1]["usec"])[:6]
            print("  Redis commands by server time (µs per event; calls):  " + ", ".join(
                f"{name.removeprefix('cmdstat_')} {v['usec'] / (applied - first[1]):.2f} ({v['calls']:,})"
                for name, v in top))
        print(f"  figures: {fig['predictions']:,} predictions, accuracy {fig['accuracy']:.4f} (majority "
              f"{fig['majority_accuracy']:.4f}), full-play hit ratio {fig['full_play_hit_ratio']:.4f}")
        contract = fig["contract"]
        if contract.get("misrouted:wrong_partition"):
            print(f"  forwarded to their users' partitions:           {int(contract['misrouted:wrong_partition']):>10,} events "
                  f"({int(contract.get('repartitioned', 0)):,} applied there, "
                  f"{int(contract.get('repartitioned_late', 0)):,} behind their partition's clock)")
        print(f"  batches (per partition, /metrics of the first worker): {batch_figures(ports[0])}")
        collections = [b - a for a, b in zip(gc_first, gc_collections(ports[0]))]
        print(f"  garbage collections in the run (first worker), generations 0/1/2: "
              f"{'/'.join(f'{n:.0f}' for n in collections)}")
        return end_to_end, raw
    finally:  # stopped whatever happened (a failure midway leaves no worker running)
        for w in workers:
            stop_process(w, 20)


def group_settled(ports: list[int], partitions: int, timeout: float = 60.0) -> float:
    """Seconds until every worker owns predict partitions, together all of them (each worker's
    /healthz lists its partitions' lag), the same in two looks 0.5 s apart."""
    import urllib.error
    import urllib.request

    def owned(port: int) -> set[str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
                body = resp.read()
        except urllib.error.HTTPError as exc:  # 503 while not ready: the body says the same
            body = exc.read()
        return {k for k in orjson.loads(body).get("lag", {}) if k.startswith("predict/")}

    started = time.monotonic()
    last = None
    while time.monotonic() - started < timeout:
        now = [owned(port) for port in ports]
        every = set().union(*now)
        if all(now) and len(every) == partitions == sum(map(len, now)):
            if now == last:
                return time.monotonic() - started
            last = now
        else:
            last = None
        time.sleep(0.5)
    raise SystemExit(f"the group did not settle with every worker owning predict partitions in {timeout:.0f} s")


def cpu_seconds(pid: int, system_only: bool = False) -> float:
    """A process's user + system CPU time so far (Linux ``/proc``): the worker's cost per event,
    steadier than events/s on a machine whose broker I/O varies from run to run."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[12]) + (0 if system_only else int(fields[11]))) / os.sysconf("SC_CLK_TCK")


def machine_idle() -> tuple[float, float]:
    """(idle, all) CPU seconds of the whole machine so far (Linux ``/proc/stat``, every core):
    whether processes that do not use their cores wait (the cores idle) or are crowded out."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    return (fields[3] + fields[4]) / tick, sum(fields[:8]) / tick  # idle + iowait; all but guest time


def peak_rss(pid: int) -> int:
    """A process's peak resident memory in bytes (Linux ``/proc``: VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def metric_samples(url: str) -> list:
    """Every sample a worker's /metrics exposes, read by prometheus_client's parser."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def batch_figures(port: int) -> str:
    """How many partition batches each stage committed and their mean processing-and-commit time."""
    found = {(s.name, s.labels.get("stage")): s.value for s in metric_samples(f"http://127.0.0.1:{port}/metrics")
             if s.name.startswith("skipcache_batch_processing_seconds_")}
    out = []
    for stage in ("predict", "warm"):
        count = found.get(("skipcache_batch_processing_seconds_count", stage), 0.0)
        total = found.get(("skipcache_batch_processing_seconds_sum", stage), 0.0)
        out.append(f"{stage} {count:,.0f} (mean {1000 * total / count if count else 0:.0f} ms)")
    return ", ".join(out)


def gc_collections(port: int) -> list[float]:
    """The worker's garbage collections so far, by generation (its /metrics)."""
    found = {s.labels["generation"]: s.value for s in metric_samples(f"http://127.0.0.1:{port}/metrics")
             if s.name == "python_gc_collections_total"}
    return [found.get(g, 0.0) for g in "012"]


def clean_runs(args, catalogue, events, settings_for, work: Path) -> None:
    """The same replay, produced before the worker starts, through a fresh worker (new group, new
    state) several times: how much do two clean runs differ?"""
    from models.events import Catalogue
    from stream.bootstrap import build_store
    from stream.cli.jobs import live_figures
    from stream.cli.services import start_worker, stop_process, wait_http
    from stream.producer import replay

    rows = []
    for i in range(args.clean_runs):
        st, env = settings_for(uuid.uuid4().hex[:6])
        replay(events, st.kafka_bootstrap, st.topic_sessions, progress=False)
        store = build_store(st)
        w = start_worker(env, work / f"worker-clean-{i}.log")
        wait_http(f"http://127.0.0.1:{st.web_port}/healthz", proc=w)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            applied = sum(store.offset(p) for p in range(st.partitions))
            if applied >= len(events) and live_figures(st, store, Catalogue())["warm_caught_up"]:
                break
            time.sleep(0.2)
        fig = live_figures(st, store, Catalogue())
        stop_process(w, 20)
        rows.append(fig)
        print(f"  run {i + 1}: predictions {fig['predictions']:,}  accuracy {fig['accuracy']:.4f}  full-play hit ratio "
              f"{fig['full_play_hit_ratio']:.4f}  promotions {fig['promotions']:,}  late entries {fig['warm_late_entries']}")
    for key in ("accuracy", "full_play_hit_ratio"):
        values = [r[key] for r in rows]
        print(f"{key}: {min(values):.4f} .. {max(values):.4f} (spread {100 * (max(values) - min(values)):.3f} points)")
    print(f"late entries: {[r['warm_late_entries'] for r in rows]}")
    sim = simulated(work, catalogue, events, st)
    same = {key: all(r[key] == sim[key] for r in rows)
            for key in ("predictions", "accuracy", "promotions", "full_play_hits")}
    print(f"skipcache simulate, same events, model, thresholds and {st.partitions} partitions: predictions "
          f"{sim['predictions']:,}  accuracy {sim['accuracy']:.4f}  full-play hit ratio {sim['full_play_hit_ratio']:.4f}  "
          f"promotions {sim['promotions']:,}; every run equal to it: {same}")


def simulated(work: Path, catalogue, events, st) -> dict:
    """What ``skipcache simulate`` says of the same replay (the plays open at its end stay open, as live)."""
    from models.artifacts import load
    from stream.cli.jobs import simulate_as_worker

    return simulate_as_worker(events, catalogue, load(work / "m.joblib"), st, end_sessions=False)


def start_profile(pid: int, out: Path):
    if shutil.which("py-spy") is None:
        raise SystemExit("--profile needs py-spy on PATH (pip install py-spy)")
    out.parent.mkdir(parents=True, exist_ok=True)  # py-spy writes nothing, and says nothing, into a missing folder
    return subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--rate", "100", "--format", "raw", "--gil",
                             "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def print_profile(spy, out: Path, top: int = 25) -> None:
    """Where the worker's time went: py-spy's samples of whichever thread held the GIL (the
    worker is bound by one core's Python), the frames with the most samples on their own (self)
    and below them (total), as shares of all samples."""
    import signal
    from collections import Counter

    spy.send_signal(signal.SIGINT)
    spy.wait(30)
    own, total, ours = Counter(), Counter(), Counter()
    samples = 0
    for line in out.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        n = int(n)
        samples += n
        own[frames[-1]] += n
        for f in set(frames[1:]):
            total[f] += n
            if "/work/" in f or "(stream/" in f or "(models/" in f or "(cache_warmer/" in f:
                ours[f] += n
    print(f"profile (py-spy, {samples:,} samples of the thread holding the GIL):")
    print("  self:")
    for name, n in own.most_common(top):
        print(f"    {n / samples:6.1%}  {name[:110]}")
    print("  total, our code:")
    for name, n in ours.most_common(top):
        print(f"    {n / samples:6.1%}  {name[:110]}")


def latency(args, events, settings_for, work: Path) -> None:
    """Produce -> cache command consumed, at a steady 2,000 events/s (``--latency-rate``); and
    the entries the warm stage applied out of event-time order meanwhile (a source it stopped
    waiting for that was not done)."""
    from kafka import KafkaConsumer
    from stream.kafka_io import user_key
    from stream.producer import make_producer
    from models.events import Catalogue
    from stream.bootstrap import build_store
    from stream.cli.jobs import live_figures
    from stream.cli.services import start_worker, stop_process, wait_http

    extra = {"SKIPCACHE_FETCH_MAX_WAIT_MS": args.latency_fetch_wait} if args.latency_fetch_wait else {}
    st, env = settings_for(uuid.uuid4().hex[:6], SKIPCACHE_BATCH_WITHIN=args.latency_within, **extra)
    worker = start_worker(env, work / "worker-latency.log")
    try:
        wait_http(f"http://127.0.0.1:{st.web_port}/healthz", proc=worker)
        time.sleep(3)
        sent_at: dict[float, float] = {}
        latencies: list[float] = []
        stop = threading.Event()

        def consume() -> None:
            consumer = KafkaConsumer(st.topic_commands, bootstrap_servers=st.kafka_bootstrap,
                                     auto_offset_reset="earliest", fetch_max_wait_ms=10)
            while not stop.is_set():
                for records in consumer.poll(timeout_ms=100).values():
                    arrived = time.perf_counter()
                    for m in records:
                        d = orjson.loads(m.value)
                        t = sent_at.get(d["time"])
                        if t is not None and d["reason"] == "upcoming":
                            latencies.append(arrived - t)
            consumer.close()

        thread = threading.Thread(target=consume, daemon=True)
        thread.start()
        producer = make_producer(st.kafka_bootstrap)
        n = int(args.latency_rate * args.latency_seconds)
        start = time.perf_counter()
        for i, e in enumerate(events[:n]):
            due = start + i / args.latency_rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent_at.setdefault(e.ts, time.perf_counter())
            producer.send(st.topic_sessions, key=user_key(e.user_id), value=orjson.dumps(e.to_json()))
            if i % 200 == 0:
                producer.flush()
        producer.flush()
        achieved = n / (time.perf_counter() - start)
        time.sleep(3)
        stop.set()
        thread.join()
        stages = stage_latencies(f"http://127.0.0.1:{st.web_port}/metrics")
        late = live_figures(st, build_store(st), Catalogue())["warm_late_entries"]
    finally:  # stopped whatever happened (a failure midway leaves no worker running)
        stop_process(worker, 20)
    q = statistics.quantiles(latencies, n=100)
    print(f"end-to-end latency, produce -> cache command consumed, at {achieved:,.0f} events/s "
          f"({len(latencies):,} decisions, batch within {st.batch_within} s, fetch wait {st.fetch_max_wait_ms} ms): p50 {q[49] * 1000:.0f} ms, p99 {q[98] * 1000:.0f} ms; "
          f"{late} entries applied out of event-time order")
    for stage, (p50, p99) in stages.items():
        print(f"  of which {stage} stage, a record's Kafka timestamp -> its batch committed (worker's histogram): "
              f"p50 <= {p50 * 1000:.0f} ms, p99 <= {p99 * 1000:.0f} ms")


def stage_latencies(url: str) -> dict[str, tuple[float, float]]:
    """p50 and p99 (bucket upper bounds) of skipcache_event_latency_seconds, by stage."""
    buckets: dict[str, list[tuple[float, float]]] = {}
    for sample in metric_samples(url):
        if sample.name == "skipcache_event_latency_seconds_bucket":
            buckets.setdefault(sample.labels["stage"], []).append((float(sample.labels["le"]), sample.value))
    out = {}
    for stage, rows in buckets.items():
        rows.sort()
        total = rows[-1][1]
        pick = lambda q: next(le for le, n in rows if n >= q * total)  # noqa: E731
        out[stage] = (pick(0.5), pick(0.99))
    return out


if __name__ == "__main__":
    main()
