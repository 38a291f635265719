"""The warm stage's cost per shadow placement (issue 21): events/s of one warm partition with 0, 2
and 4 shadows on the same entries, in the same run, beside a raw baseline (decoding the entries
messages alone), with the bytes each commit writes and the profile of the 4-shadow run.

The predict stage runs once (in memory, the worker's own runtimes and the memory store); its
entries messages are then applied by a fresh warm partition per configuration, rounds interleaved
so a noisy machine slows every configuration alike.
Run: python bench/bench_shadows.py [users]"""
from __future__ import annotations

import cProfile
import io
import pstats
import statistics
import sys
import time

import orjson

from _common import trained_replay

BATCH = 1  # entries messages per warm batch: one predict batch (1,000 events) each, as the live worker commits
ROUNDS = 3


def main() -> None:
    from models.artifacts import load
    from stream.bootstrap import build_worker
    from stream.settings import Settings
    from stream.stores.memory import MemoryStore
    from stream.worker.in_memory import list_sinks
    from stream.worker.stages.entry_codec import decode

    users = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    work, catalogue, events = trained_replay("bench-shadows-", users)
    art = load(work / "m.joblib")
    base = Settings(partitions=1, warm_partitions=1)
    worker = build_worker(base, store=MemoryStore(), catalogue=catalogue, artifact=art, sinks=list_sinks())
    predict = worker.predict_runtime(0)
    records = [(i, orjson.dumps(e.to_json())) for i, e in enumerate(events)]
    topic: list[tuple[int, bytes]] = []
    for i in range(0, len(records), 1000):
        out = predict.process(records[i:i + 1000])
        topic += [(len(topic), v) for sink, _, v, _ in out.publish if sink == "entries"]
        assert predict.commit(out)
    entries = sum(len(decode(v, 1)[2]) for _, v in topic)
    print(f"{len(events):,} events -> {len(topic):,} entries messages, {entries:,} entries (one warm partition)")

    def baseline() -> float:
        started = time.perf_counter()
        for _, v in topic:
            decode(v, 1)
        return time.perf_counter() - started

    def warm(shadows: str, profile: cProfile.Profile | None = None) -> tuple[float, int, dict]:
        settings = Settings(partitions=1, warm_partitions=1, shadow_thresholds=shadows)
        w = build_worker(settings, store=MemoryStore(), catalogue=catalogue, artifact=art, sinks=list_sinks())
        rt = w.warm_runtime(0)
        written = 0
        started = time.perf_counter()
        if profile:
            profile.enable()
        for i in range(0, len(topic), BATCH):
            out = rt.process(topic[i:i + BATCH])
            written += len(out.changes.blob) if out.changes is not None else 0
            assert rt.commit(out)
        if profile:
            profile.disable()
        return time.perf_counter() - started, written, {"promotions": rt.warmer.figures.promotions}

    configs = {0: "", 2: "0.3,0.7", 4: "0.3,0.4,0.6,0.7"}
    times: dict[int, list[float]] = {n: [] for n in configs}
    base_times, written = [], {}
    for _ in range(ROUNDS):
        base_times.append(baseline())
        for n, spec in configs.items():
            seconds, written[n], _ = warm(spec)
            times[n].append(seconds)
    raw = statistics.median(base_times)
    print(f"raw baseline (decoding the entries messages only): {entries / raw:>10,.0f} entries/s")
    zero = statistics.median(times[0])
    for n in configs:
        t = statistics.median(times[n])
        extra = (t - zero) / n if n else 0.0
        print(f"warm stage, {n} shadows: {len(events) / t:>9,.0f} events/s  {entries / t:>9,.0f} entries/s  "
              f"(x{raw / t:.3f} of raw; {t:.2f} s, rounds {', '.join(f'{x:.2f}' for x in times[n])}; "
              f"+{extra / zero * 100 if n else 0:.0f}% of the 0-shadow time per shadow; "
              f"{written[n] / (len(topic) / BATCH) / 1024:.0f} KiB of state written per commit)")
    prof = cProfile.Profile()
    warm(configs[4], prof)
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(14)
    print("profile of the 4-shadow run (tottime):")
    print("\n".join(line for line in buf.getvalue().splitlines()[6:] if line.strip()))


if __name__ == "__main__":
    main()
