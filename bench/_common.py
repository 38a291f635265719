"""Shared by the benchmarks: a generated data set of about 3 million events, made once."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("SKIPCACHE_BENCH_DATA", "/tmp/skipcache-bench-3m"))


def bench_data(users: int = 8000, seed: int = 42) -> Path:
    """~3.1 million events (long profile, 8,000 users); generated on first use."""
    from stream.synthetic import generate

    marker = DATA / ".complete"
    if not marker.exists():
        started = time.perf_counter()
        generate(DATA, users=users, seed=seed, profile="long")
        marker.write_text(str(users))
        print(f"generated {DATA} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return DATA
