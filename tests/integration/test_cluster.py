"""The live state on a Redis/Valkey Cluster (3 primaries, each with a replica, from the same
server binary the other tests use): a replay gives the one-server figures; a primary killed -9
mid-replay (its replica promoted) or failed over by hand changes no figure."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import redis
from redis.cluster import ClusterNode

from stream.cli.jobs import live_figures
from stream.cli.services import start_redis_cluster, stop_process
from stream.settings import Settings

from tests.integration.conftest import COMPARED, expected_figures, make_live
from tests.integration.test_faults import _health, _wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(tmp_path):
    c = start_redis_cluster(3, 1, workdir=tmp_path / "cluster")
    yield c
    c.stop()


def _on_cluster(servers, cluster, live_data, tmp_path, **extra):
    kafka, _ = servers
    live = make_live(kafka.port, 0, live_data, tmp_path, **extra)
    live.env["SKIPCACHE_REDIS"] = cluster.url
    live.settings = Settings.from_env(live.env)
    return live


def _owner(cluster, key: str):
    """The node serving ``key``'s slot now."""
    alive = [ClusterNode("127.0.0.1", n.port) for n in cluster.nodes if n.proc.poll() is None]
    client = redis.RedisCluster(startup_nodes=alive)
    try:
        return cluster.node(client.get_node_from_key(key).port)
    finally:
        client.close()


def _assert_equal(live, live_data) -> None:
    fig, expected = live_figures(live.settings), expected_figures(live_data, live.settings)
    for key in COMPARED:
        assert fig[key] == expected[key], key
    assert fig["predictions"] > 5000


def _longest_pause(live, until: threading.Event) -> list[float]:
    """Watch the applied offsets; the longest time they stood still while work was left."""
    longest = [0.0]

    def watch() -> None:
        last, since = -1, time.monotonic()
        while not until.is_set():
            try:
                now = live.applied()
            except Exception:  # noqa: BLE001 - the slot's primary is away: that is the pause
                now = last
            if now != last:
                longest[0] = max(longest[0], time.monotonic() - since)
                last, since = now, time.monotonic()
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()
    return longest


def test_a_replay_on_a_three_primary_cluster_gives_the_one_server_figures(servers, cluster, live_data, tmp_path):
    live = _on_cluster(servers, cluster, live_data, tmp_path)
    _, _, events, _ = live_data
    worker, _ = live.start_worker()
    try:
        live.send(events)
        live.wait_applied(len(events), workers=[worker])
        _assert_equal(live, live_data)
    finally:
        stop_process(worker, 20)


@pytest.mark.parametrize("stage,how", [("predict", "kill"), ("warm", "kill"), ("predict", "failover")])
def test_a_primary_lost_mid_replay_changes_no_figure(servers, cluster, live_data, tmp_path, stage, how):
    live = _on_cluster(servers, cluster, live_data, tmp_path, SKIPCACHE_BATCH_SIZE="100")  # slow enough to hit
    _, _, events, _ = live_data
    key = f"{{{live.settings.redis_prefix}:{stage}:0}}:offset"
    victim = _owner(cluster, key)
    worker, _ = live.start_worker()
    done = threading.Event()
    pause = _longest_pause(live, done)
    feeder = live.feed(events)
    try:
        assert live.wait_partly(len(events) // 3) < len(events), "the worker finished before the fault"
        if how == "kill":
            os.kill(victim.proc.pid, signal.SIGKILL)
            victim.proc.wait()
        else:  # a manual failover, as an operator does before maintenance: its replica takes over
            replica = next(n for n in cluster.nodes[cluster.primaries:]
                           if redis.Redis(port=n.port).info("replication").get("master_port") == victim.port)
            redis.Redis(port=replica.port).execute_command("CLUSTER", "FAILOVER")
        feeder.join()
        live.wait_applied(len(events), workers=[worker], timeout=120)
        assert _owner(cluster, key).port != victim.port  # the replica serves the slot now
        _assert_equal(live, live_data)
        print(f"{how} of the primary of {key}: processing paused at most {pause[0]:.1f} s")
    finally:
        done.set()
        stop_process(worker, 20)


def test_acknowledged_writes_lost_in_a_failover_still_end_equal(servers, cluster, live_data, tmp_path):
    """Replication is asynchronous: a failover can lose the last commits the primary
    acknowledged. Made to happen here: the replica is paused and cut off, the worker commits on,
    the primary is killed and the stale replica takes over. The partition's state and offset
    share a slot, so they are lost together; the worker finds the older offset, replays from it,
    and ends with the same figures (the entries it re-sends are dropped as already applied)."""
    live = _on_cluster(servers, cluster, live_data, tmp_path, SKIPCACHE_BATCH_SIZE="100")
    _, _, events, _ = live_data
    key = f"{{{live.settings.redis_prefix}:predict:0}}:offset"
    victim = _owner(cluster, key)
    replica = next(n for n in cluster.nodes[cluster.primaries:]
                   if redis.Redis(port=n.port).info("replication").get("master_port") == victim.port)
    worker, _ = live.start_worker()
    feeder = live.feed(events)
    try:
        live.wait_partly(len(events) // 4)
        os.kill(replica.proc.pid, signal.SIGSTOP)
        redis.Redis(port=victim.port).execute_command("CLIENT", "KILL", "TYPE", "replica")
        cut = live.applied()
        time.sleep(1.0)  # commits the replica never gets
        lost = live.applied() - cut
        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait()
        os.kill(replica.proc.pid, signal.SIGCONT)
        assert lost > 0, "the worker committed nothing while the replica was cut off"
        feeder.join()
        live.wait_applied(len(events), workers=[worker], timeout=120)
        assert _owner(cluster, key).port == replica.port
        _assert_equal(live, live_data)
        log = (live.workdir / "w.log").read_text()
        assert "rolled_back" in log or "rolled back" in log  # said: the state came back older
        print(f"{lost:,} events' commits acknowledged and lost in the failover; replayed, figures equal")
    finally:
        stop_process(worker, 20)
        if replica.proc.poll() is None:
            os.kill(replica.proc.pid, signal.SIGCONT)


def test_state_in_the_layout_before_hash_tags_is_refused_then_migrated(servers, tmp_path):
    """A Redis holding the old layout: the worker's store refuses it, saying what to do;
    `skipcache state migrate` moves every key under its partition's tag, sums unchanged."""
    import subprocess
    import sys
    import uuid

    from stream.bootstrap import build_store
    from stream.stores.redis_store import OldLayout

    _, server = servers
    prefix = f"old{uuid.uuid4().hex[:6]}"
    env = {"SKIPCACHE_REDIS": f"redis://127.0.0.1:{server.port}/0", "SKIPCACHE_REDIS_PREFIX": prefix,
           "SKIPCACHE_PARTITIONS": "2", "SKIPCACHE_WARM_PARTITIONS": "1"}
    store = build_store(Settings.from_env(env))
    r = store.r
    r.set(f"{prefix}:0:offset", 120)
    r.set(f"{prefix}:1:offset", 80)
    r.set(f"{prefix}:1:u:7", b"[1]")
    r.hset(f"{prefix}:tracks", mapping={"n:" + "t" * 22: 5, "l:" + "t" * 22: 1})
    r.hset(f"{prefix}:counters:events", mapping={"play": 200})
    r.set(f"{prefix}:warm:0:offset", 33)
    r.rpush(f"{prefix}:warm:0:queue:1", b"[1,0,2.0]")
    with pytest.raises(OldLayout, match="skipcache state migrate"):
        store.check_layout()
    out = subprocess.run([sys.executable, "-m", "stream.cli", "state", "migrate"], env={**os.environ, **env},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "moved 7 keys" in out.stdout and "of 1 keys" in out.stdout, out.stdout + out.stderr
    store.check_layout()
    assert (store.offset(0), store.offset(1), store.stage("warm").offset(0)) == (120, 80, 33)
    assert store.fetch(1, [7], [], ["t" * 22]) == ({7: [1]}, {}, {"t" * 22: [5.0, 0.0, 1.0]})
    assert store.counters("events") == {"play": 200}
    assert store.stage("warm").queue(0, 1) == [[1, 0, 2.0]]


def test_track_counts_in_three_fields_are_refused_then_packed(servers, cluster):
    """Track counts stored by an earlier version, three fields per track (``n:``, ``k:``, ``l:``):
    the store refuses them, saying what to do, and ``migrate_layout`` packs each track's into one
    field (``COUNTS``), on one server and on a cluster; the counts read the same after."""
    from stream.stores.redis_store import OldLayout, RedisStore

    _, server = servers
    t, u = "t" * 22, "u" * 22
    for url in (f"redis://127.0.0.1:{server.port}/0", cluster.url):
        store = RedisStore.from_url(url, prefix=f"tf{os.getpid()}{time.monotonic_ns() % 10**6}", partitions=2)
        try:
            base = f"{store.slot(1, 'predict')}:tracks"
            store.r.hset(base, mapping={f"n:{t}": 5, f"k:{t}": 2, f"l:{t}": 1, f"n:{u}": 3, "epoch": 11})
            store.r.hset(f"{base}:now", mapping={f"n:{t}": 4, f"l:{u}": 1})
            with pytest.raises(OldLayout, match="skipcache state migrate"):
                store.check_layout()
            assert store.migrate_layout() == (0, 2)
            store.check_layout()
            assert store.migrate_layout() == (0, 0)  # once
            assert store.epoch_plays(1) == (11, {t: [4.0, 0.0, 0.0], u: [0.0, 0.0, 1.0]})
            _, part = store.track_counts([u, t], (11, 11))
            assert (part.epoch, part.settled) == (11, {t: [5.0, 2.0, 1.0], u: [3.0, 0.0, 0.0]})
            assert store.fetch(0, [], [], [t, u], 12)[2] == {t: [9.0, 2.0, 1.0], u: [3.0, 0.0, 1.0]}
        finally:
            store.r.close()


def test_a_slot_without_a_primary_makes_healthz_name_the_node(servers, live_data, tmp_path):
    """No replica to take over: the worker waits (never crashes) and /healthz names the node it
    cannot reach. (With a replica, the client may ride the failover out with its own retries, and
    the moment of naming it is too short to assert on.)"""
    cluster = start_redis_cluster(3, 0, workdir=tmp_path / "cluster")
    worker = None
    try:
        live = _on_cluster(servers, cluster, live_data, tmp_path, SKIPCACHE_SHUTDOWN_GRACE_SECONDS="3")
        events = live_data[2][:2000]
        victim = _owner(cluster, f"{{{live.settings.redis_prefix}:predict:0}}:offset")
        worker, port = live.start_worker()
        live.send(events)
        live.wait_applied(len(events), workers=[worker])
        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait()
        live.send(live_data[2][2000:2100])  # a batch whose commit cannot be made

        def names_the_node() -> bool:
            status, body = _health(port)
            return status == 503 and f"127.0.0.1:{victim.port}" in body["dependencies"]["redis"].get("unreachable", [])

        _wait_until(names_the_node, timeout=30, what="/healthz to name the unreachable node")
        time.sleep(2)
        assert worker.poll() is None  # still waiting
    finally:
        if worker is not None:
            stop_process(worker, 30)
        cluster.stop()


def test_track_counts_read_by_epoch_on_a_server_and_on_a_cluster(servers, cluster):
    """The epoch bookkeeping of the track counts (``tests/stream/test_track_epochs.py``), through
    the commit and read Functions, on one server and on a cluster (each partition's keys in its
    slot), and through WATCH/MULTI and HMGETs where the server has no Functions; and another
    process's mirror of a partition's counts, kept by the plans its commits log."""
    from stream.stores.redis_store import RedisStore
    from stream.stores.redis_store import LOG_KEEP
    from tests.stream.test_track_epochs import check_epoch_reads, check_mirrors

    _, server = servers
    single = f"redis://127.0.0.1:{server.port}/0"
    for url, functions in ((single, None), (cluster.url, None), (single, False)):  # False: as on Redis < 7
        store = RedisStore.from_url(url, prefix=f"ep{os.getpid()}{time.monotonic_ns() % 10**6}", partitions=2)
        store._shared["functions"] = functions
        mirrored = RedisStore.from_url(url, prefix=store.root + "m", partitions=2)
        mirrored._shared["functions"] = functions
        try:
            check_epoch_reads(store)
            check_mirrors(mirrored, "unlogged" if functions is False else "logged", LOG_KEEP)
        finally:
            store.r.close()
            mirrored.r.close()


PREVIOUS_LIBRARIES = {"skipcache_v7": ("skipcache_commit_v6", "skipcache_tracks_v5"),
                      "skipcache_v6": ("skipcache_commit_v5", "skipcache_tracks_v4"),
                      "skipcache_v5": ("skipcache_commit_v4", "skipcache_tracks_v3")}
"""Libraries earlier versions loaded, and the functions they registered."""


def test_a_server_that_lost_its_functions_gets_them_back_at_the_next_read(servers):
    """A server restarted empty holds no Functions. On one server the commit calls none (WATCH/
    MULTI), so the batch's read must load them: it failed for good otherwise, and the worker
    applied nothing more (``test_faults.py``, Redis back empty)."""
    import redis as redis_py

    from stream.stores.redis_store import FUNCTION_LIBRARY, RedisStore

    _, server = servers
    r = redis_py.Redis(port=server.port)
    store = RedisStore.from_url(f"redis://127.0.0.1:{server.port}/0", prefix=f"lost{os.getpid()}", partitions=2)
    track = "a" * 22
    try:
        assert store.track_counts([track])  # the Functions loaded, and read through
        for read in (lambda: store.track_counts([track]), lambda: store.read_batch(0, [7], [(7, 1)], [track])):
            r.execute_command("FUNCTION", "FLUSH")
            assert read()  # loaded again, then read
            listed = {lib[b"library_name"].decode() for lib in r.execute_command("FUNCTION", "LIST")}
            assert FUNCTION_LIBRARY in listed
        got = store.read_batch(0, [7], [(7, 1)], [track])
        assert got.position is None and len(got.tracks) == 2
    finally:
        store.r.close()
        r.close()


def test_a_server_holding_an_earlier_function_library_loads_this_one(servers):
    """Function names are global across a server's libraries: an upgraded worker whose library
    registered a name the previous one has would be refused at its first commit."""
    import redis as redis_py

    from stream.stores.redis_store import FUNCTION, FUNCTION_LIBRARY, READ_SINCE, READ_TRACKS, RedisStore
    from tests.stream.test_track_epochs import check_epoch_reads

    names = {FUNCTION, READ_TRACKS, READ_SINCE}
    assert FUNCTION_LIBRARY not in PREVIOUS_LIBRARIES
    assert not names & {f for fs in PREVIOUS_LIBRARIES.values() for f in fs}
    _, server = servers
    r = redis_py.Redis(port=server.port)
    try:
        library, functions = next(iter(PREVIOUS_LIBRARIES.items()))
        r.execute_command("FUNCTION", "LOAD", "REPLACE", f"#!lua name={library}\n" + "".join(
            f"redis.register_function('{f}', function() return 1 end)\n" for f in functions))
        store = RedisStore.from_url(f"redis://127.0.0.1:{server.port}/0", prefix=f"up{os.getpid()}", partitions=2)
        try:
            check_epoch_reads(store)  # loads this library beside it, then commits and reads through it
            listed = {lib[b"library_name"].decode() for lib in r.execute_command("FUNCTION", "LIST")}
            assert {library, FUNCTION_LIBRARY} <= listed
        finally:
            store.r.close()
    finally:
        r.execute_command("FUNCTION", "DELETE", library)
        r.close()
