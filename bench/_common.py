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


def trained_replay(prefix: str, users: int):
    """A fresh work folder with a generated long-profile export of ``users`` users (seed 9) and a
    linear_svc trained on its first half: (folder, the export's catalogue, the events in replay order)."""
    import tempfile

    from stream.cli import main as cli
    from stream.cli.jobs import load_replay
    from stream.synthetic import generate

    work = Path(tempfile.mkdtemp(prefix=prefix))
    generate(work / "data", users=users, seed=9, profile="long", progress=False)
    cli(["train", "--data", str(work / "data"), "--out", str(work / "m.joblib"), "--train-fraction", "0.5"])
    ds, events = load_replay(work / "data", progress=False)
    return work, ds.catalogue, events


def worker_env(tag: str, kafka_port: int, redis_port: int, work: Path, partitions: int, **extra: str):
    """(Settings, environment) of a worker on the benchmark's servers, with topics and a key
    prefix of its own (created here): ``extra`` overrides any variable."""
    from stream.cli.services import create_topics, free_port
    from stream.settings import Settings

    env = {"SKIPCACHE_APP_ID": f"bench-{tag}", "SKIPCACHE_KAFKA": f"127.0.0.1:{kafka_port}",
           "SKIPCACHE_REDIS": f"redis://127.0.0.1:{redis_port}/0", "SKIPCACHE_REDIS_PREFIX": tag,
           "SKIPCACHE_MODEL": str(work / "m.joblib"), "SKIPCACHE_DATA": str(work / "data"),
           "SKIPCACHE_PARTITIONS": str(partitions), "SKIPCACHE_WARM_PARTITIONS": str(partitions),
           "SKIPCACHE_TOPIC_SESSIONS": f"sessions-{tag}", "SKIPCACHE_TOPIC_ENTRIES": f"entries-{tag}",
           "SKIPCACHE_TOPIC_REPARTITION": f"by-user-{tag}",
           "SKIPCACHE_TOPIC_COMMANDS": f"commands-{tag}", "SKIPCACHE_TOPIC_DEAD_LETTER": f"dead-{tag}",
           "SKIPCACHE_WEB_PORT": str(free_port()), **extra}
    st = Settings.from_env(env)
    create_topics(st.kafka_bootstrap, st.topics)
    return st, env
