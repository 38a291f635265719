"""Reader throughput (lines/s) next to a raw baseline, and evaluate's wall time, on ~3M events.

Targets (issue 2): >= 300k lines/s read; evaluate under 3 minutes.
Run: python bench/bench_foundation.py [--skip-evaluate]"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time

import orjson

from _common import ROOT, bench_data


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-evaluate", action="store_true")
    args = ap.parse_args()
    data = bench_data()
    sessions = data / "sessions.jsonl"

    started = time.perf_counter()
    with open(sessions, "rb") as fh:
        n_raw = sum(1 for line in fh.read().split(b"\n") if line and orjson.loads(line) is not None)
    raw_s = time.perf_counter() - started

    from stream.files import read_dataset

    started = time.perf_counter()
    ds = read_dataset(data, progress=False)
    read_s = time.perf_counter() - started
    lines = sum(ds.lines.values())
    print(f"raw baseline (read file + orjson.loads, no validation): {n_raw / raw_s:,.0f} lines/s")
    print(f"skipcache reader (all five files, parsed and validated):  {lines / read_s:,.0f} lines/s "
          f"({lines:,} lines in {read_s:.2f} s; {lines / read_s / (n_raw / raw_s):.2f}x the raw baseline)")
    del ds
    if not args.skip_evaluate:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "stream.cli", "evaluate", "--data", str(data),
                        "--json", str(ROOT / "bench" / "out" / "evaluate-3m.json")], check=True, cwd=ROOT)
        print(f"skipcache evaluate, all default models, {len(open(sessions, 'rb').readlines()):,} events: "
              f"{time.perf_counter() - started:.1f} s wall")


if __name__ == "__main__":
    main()
