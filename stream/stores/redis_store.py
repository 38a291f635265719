"""Redis StateStore, for one server or a Redis/Valkey Cluster (``redis+cluster://host:port,...``):
one round trip per batch to read, one fenced call per batch to write.

Every key one partition's batch touches carries the partition's hash tag, so they share one
slot (a cluster runs the batch's commit on one node, atomically):

    {sc:predict:P}:u:USER  :s:USER:SESSION   users and open sessions (orjson lists, with a TTL)
    {sc:predict:P}:blob    :offset           pending predictions; the next offset to apply
    {sc:predict:P}:offset:repartition        the next offset of its repartition partition
    {sc:predict:P}:queue:S                   events partition S forwarded, held until their time
                                             (a list, one element per commit: held.py)
    {sc:predict:P}:tracks                    this partition's settled additions to the track
                                             counts (a field per track, COUNTS; epoch)
    {sc:predict:P}:tracks:now  :tracks:last  its additions in its stored epoch, the one before
    {sc:predict:P}:tracks:log  :tracks:seq   its last commits' plans of those additions (LOG_KEEP)
                                             and how many it logged: other processes' ``Mirror``s
    {sc:warm:Q}:blob  :offset  :queue:P      the cache shard; held-back entries of source P
    {sc:STAGE:N}:counters:NAME:EPOCH         this partition's counts (events, rejected, ab:A ...)
    sc:config                                thresholds, experiment start, counter epochs

Nothing is shared between partitions inside a batch: the global track counts are the sum of
every predict partition's additions before the reader's epoch (``stream/store.py``; read: one
call of the read Function per predict partition, pipelined, or, for a partition the reader
mirrors, of the log-read Function: the plans since its copy), the counters the sum of every
partition's. Resetting counters bumps their epoch in ``sc:config``
(written outside any batch): commits move to the new epoch within a threshold refresh (0.5 s).

The commit is fenced: it applies the batch only if the stored offsets are still the ones the batch
began from. On a cluster a Function (``FUNCTION LOAD``, replicated to replicas) compares and
applies in one call, so a client that retries it (a redirect, a reconnect after a failover) can
never apply a batch twice or over a foreign write: the retry finds the new offset and is refused,
and the worker re-reads the partition. On one server the commit is WATCH, a read of the offsets,
then MULTI/EXEC of the batch's own commands: redis-py's single-server client does not retry a
transaction whose watch a lost connection ended (the commit raises the connection's error, as the
Function's call does: the worker waits for Redis and re-reads the partition). One round trip
more, but the server runs the commands natively, where the Function copies every argument into
Lua and back: 0.58 against 1.49 µs of server time per event in two processes, whose cores the
server shares (``bench/RESULTS.md``, issue 16)."""
from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import parse_qs, urlsplit

import orjson
import redis
from redis.cluster import ClusterNode, RedisCluster

from stream.store import BatchRead, Changes, CountsLog, TrackCounts, counts_as_of, parts_needed
from stream.stores.redis_wire import connection_class
from models.state import upgrade_user

T = TypeVar("T")

FUNCTION_LIBRARY = "skipcache_v8"
"""A new library renames every function it registers: a server that holds the previous library
refuses to load a function name that library already has (``tests/integration/test_cluster.py``)."""
FUNCTION = "skipcache_commit_v7"
READ_TRACKS = "skipcache_tracks_v6"
READ_SINCE = "skipcache_tracks_since_v1"
LOG_KEEP = 32
"""Plans a predict partition's log keeps (``Mirror``): a reader further behind reads the parts whole."""
UNPACK_CHUNK = 999
"""Values per call inside a Function (Lua's unpack has a stack limit)."""
TRACK_CHUNK = UNPACK_CHUNK // 2
"""Tracks per HMGET and HSET when a commit adds to the track counts (an HSET takes two values each)."""
FUNCTION_CODE = f"""#!lua name={FUNCTION_LIBRARY}
-- ARGV[1]: F, the fenced offsets (the partition's, then its other inputs'), KEYS[1..F]; ARGV[2..]:
-- F offsets the batch began at, then F new offsets; then per command: its name, the index of its
-- key in KEYS, how many arguments follow. HINCRBY may carry many (field, increment) pairs, and
-- TRACKADD many (track, packed additions) pairs: a batch's track counts go as one command per key.
local function commit(keys, args)
  local f = tonumber(args[1])
  for j = 1, f do
    if (tonumber(redis.call('GET', keys[j])) or 0) ~= tonumber(args[1 + j]) then
      return 0
    end
  end
  local i, n = 2 + 2 * f, #args
  while i <= n do
    local name, key, count = args[i], keys[tonumber(args[i + 1])], tonumber(args[i + 2])
    if name == 'HINCRBY' then
      for j = i + 3, i + 1 + count, 2 do
        redis.call('HINCRBY', key, args[j], args[j + 1])
      end
    elseif name == 'TRACKADD' then  -- (track, packed additions) pairs, added to the packed counts:
      -- one HMGET and one HSET per {TRACK_CHUNK} tracks (with two calls per track the commit took 1.6x the server time)
      local last = i + 2 + count
      for lo = i + 3, last, {2 * TRACK_CHUNK} do
        local hi = math.min(lo + {2 * TRACK_CHUNK} - 1, last)
        local fields, nf = {{}}, 0
        for j = lo, hi, 2 do
          nf = nf + 1
          fields[nf] = args[j]
        end
        local cur = redis.call('HMGET', key, unpack(fields))
        local out = {{}}
        for q = 1, nf do
          local j = lo + 2 * q - 2
          local v, c = args[j + 1], cur[q]
          if c then
            local dn, dk, dl = struct.unpack('<ddd', v)
            local cn, ck, cl = struct.unpack('<ddd', c)
            v = struct.pack('<ddd', dn + cn, dk + ck, dl + cl)
          end
          out[2 * q - 1] = args[j]
          out[2 * q] = v
        end
        redis.call('HSET', key, unpack(out))
      end
    else
      redis.call(name, key, unpack(args, i + 3, i + 2 + count))
    end
    i = i + 3 + count
  end
  for j = 1, f do
    redis.call('SET', keys[j], args[1 + f + j])
  end
  return 1
end
redis.register_function('{FUNCTION}', commit)

-- KEYS: a predict partition's settled, stored epoch's and previous epoch's track counts; ARGV: the
-- reader's first and last epoch ('' '': everything committed), then track ids. Returns the stored
-- epoch, then per key the tracks that hold counts, as (index, packed counts) pairs: the i-th
-- track's, so the ids are sent once and come back as numbers. A key the reader does not need
-- (stream/store.py parts_needed) is not read: its list comes back empty.
local function tracks(keys, args)
  local epoch = redis.call('HGET', keys[1], 'epoch')
  local out = {{epoch}}
  local stored, first, last = tonumber(epoch), tonumber(args[1]), tonumber(args[2])
  local want = {{true, true, false}}
  if stored and first then
    want = {{true, last > stored, first < stored}}
  end
  local nt = #args
  for j = 1, 3 do
    local hits, nh = {{}}, 0  -- lengths counted, not taken with # (a search, per element appended)
    for lo = 3, want[j] and nt or 0, {UNPACK_CHUNK} do
      local hi = math.min(lo + {UNPACK_CHUNK} - 1, nt)
      local got = redis.call('HMGET', keys[j], unpack(args, lo, hi))
      for i = 1, hi - lo + 1 do
        local v = got[i]
        if v then
          hits[nh + 1] = lo + i - 3
          hits[nh + 2] = v
          nh = nh + 2
        end
      end
    end
    out[j + 1] = hits
  end
  return out
end
redis.register_function{{function_name='{READ_TRACKS}', callback=tracks, flags={{'no-writes'}}}}

-- KEYS: a predict partition's log of its commits' plans (the last {LOG_KEEP}, each '<offset> <plan>'), how
-- many it logged, its settled, stored epoch's and previous epoch's track counts; ARGV: the number of the
-- reader's last plan (-1: none), the offset it gave, the most tracks the reader holds. Returns that
-- number now, then 1 and the plans after the reader's, if they follow on from it (the reader's plan
-- is still logged, with its offset); else 2, the last plan's offset and the three parts whole
-- (HGETALLs); 0 if they hold more tracks than the reader holds (its settled part: the others are
-- its last two epochs').
local function since(keys, args)
  local n = tonumber(redis.call('GET', keys[2])) or 0
  if redis.call('HLEN', keys[3]) > tonumber(args[3]) + 1 then
    return {{n, 0}}
  end
  local len = redis.call('LLEN', keys[1])
  local first, s, p = n - len + 1, tonumber(args[1]), args[2]
  if s == n and n == 0 then
    return {{n, 1, {{}}}}
  end
  if s > 0 and s <= n and s >= first then
    local e = redis.call('LINDEX', keys[1], s - first)
    if string.sub(e, 1, #p + 1) == p .. ' ' then
      return {{n, 1, redis.call('LRANGE', keys[1], s - first + 1, -1)}}
    end
  end
  local at = ''
  if len > 0 then
    at = string.match(redis.call('LINDEX', keys[1], -1), '^(%d+) ')
  end
  return {{n, 2, at, redis.call('HGETALL', keys[3]), redis.call('HGETALL', keys[4]), redis.call('HGETALL', keys[5])}}
end
redis.register_function{{function_name='{READ_SINCE}', callback=since, flags={{'no-writes'}}}}
"""


COUNTS = struct.Struct("<ddd")
"""A track's counts in a ``:tracks`` hash, one field per track (its id): plays, skips and likes
as three little-endian doubles (exact integers up to 2**53), packed and added by the Functions'
Lua (``struct``). One field, not one per count: the read of a batch's tracks, the largest server
time of a batch, then looks up a third of the fields and builds no field names."""


def _add_counts(cmds: list[tuple], key: str, counts: dict[str, list]) -> None:
    """One TRACKADD of every track's (id, packed additions) pair: the Function adds them to the
    stored counts (the transaction, read first under WATCH)."""
    pack = COUNTS.pack
    pairs: list = []
    for t, (n, skips, likes) in counts.items():
        if n or skips or likes:
            pairs += (t, pack(n, skips, likes))
    if pairs:
        cmds.append(("TRACKADD", key, *pairs))


def _set_counts(cmds: list[tuple], key: str, counts: dict[str, list], base: dict[str, list]) -> None:
    """HSETs of every track's counts plus its additions, packed: the sums a TRACKADD would make,
    when the committer knows what the key holds (``TrackAdditions.stored``, true under the commit's
    fence); the server then only stores them (``TRACK_CHUNK`` tracks a command: Lua's unpack limit)."""
    pack, get = COUNTS.pack, base.get
    pairs: list = []
    for t, (n, skips, likes) in counts.items():
        if n or skips or likes:
            held = get(t)
            if held is not None:
                n, skips, likes = n + held[0], skips + held[1], likes + held[2]
            pairs += (t, pack(n, skips, likes))
    for lo in range(0, len(pairs), 2 * TRACK_CHUNK):
        cmds.append(("HSET", key, *pairs[lo:lo + 2 * TRACK_CHUNK]))


def _write_counts(cmds: list[tuple], key: str, counts: dict[str, list], base: dict[str, list] | None) -> None:
    """``counts`` added to what ``key`` holds: written as sums where that is known (``base``; ``{}``
    after a DEL), else added in the server."""
    if base is None:
        _add_counts(cmds, key, counts)
    else:
        _set_counts(cmds, key, counts, base)


def _added(stored: bytes | None, additions: bytes) -> bytes:
    """Packed counts plus packed additions (what TRACKADD does in the Function)."""
    if stored is None:
        return additions
    return COUNTS.pack(*(a + b for a, b in zip(COUNTS.unpack(stored), COUNTS.unpack(additions))))


def _hash_counts(fields: dict[bytes, bytes]) -> dict[str, list]:
    """track -> [plays, skips, likes] from an HGETALL of a ``:tracks`` hash (its ``epoch`` taken out)."""
    unpack = COUNTS.unpack
    return {t.decode(): list(unpack(v)) for t, v in fields.items()}


def _unpacked(hits: list, tracks: list[str]) -> dict[str, list]:
    """track -> [plays, skips, likes] from the read Function's (index, packed counts) pairs."""
    unpack = COUNTS.unpack
    return {tracks[hits[j] - 1]: list(unpack(hits[j + 1])) for j in range(0, len(hits), 2)}


def _counts_log(reply: list, since: tuple[int, int | None]) -> CountsLog:
    """``READ_SINCE``'s reply: the plans after the mirror's (``since``), or the parts whole."""
    n, how = int(reply[0]), int(reply[1])
    if how == 0:
        return CountsLog(n, None, too_big=True)
    if how == 1:
        position, plans, loads = since[1], [], orjson.loads
        for entry in reply[2]:
            at, _, plan = entry.partition(b" ")
            plans.append(tuple(loads(plan)))
            position = int(at)
        return CountsLog(n, position, plans)
    at, *parts = reply[2:]
    settled, now, last = ({f: v for f, v in zip(flat[0::2], flat[1::2])} for flat in parts)
    stored = settled.pop(b"epoch", None)
    full = TrackCounts(int(stored) if stored is not None else None, *map(_hash_counts, (settled, now, last)))
    return CountsLog(n, int(at) if at else None, full=full)


def _records(users: list[int], sessions: list[tuple[int, int]], values: list) -> tuple[dict, dict]:
    """The users and sessions that exist, from an MGET of their keys. A user record an older
    version stored grows the fields added since, here where every stored record comes in, so the
    engine reads one shape."""
    loads, nu = orjson.loads, len(users)
    return ({u: upgrade_user(loads(v)) for u, v in zip(users, values[:nu]) if v is not None},
            {k: loads(v) for k, v in zip(sessions, values[nu:]) if v is not None})


class OldLayout(RuntimeError):
    """Redis holds state in the layout before partitions had hash tags."""


class RedisStore:
    def __init__(self, client, prefix: str = "sc", ttl_seconds: int = 30 * 86400, root: str | None = None,
                 stage: str = "predict", partitions: int = 1, warm_partitions: int = 1):
        """``prefix``: the root of every key; ``partitions`` / ``warm_partitions``: each stage's
        partitions (the counters and track counts are summed over them)."""
        self.r = client
        self.root = root or prefix
        self.stage_name = stage
        self.ttl = int(ttl_seconds)
        self.partitions = {"predict": partitions, "warm": warm_partitions}
        self.cluster = isinstance(client, RedisCluster)
        self._shared: dict = {"functions": None, "epochs": None}
        """Shared by the stages' stores: whether the server runs the commit Function (None: not
        asked yet), and the counters' epochs as last read."""

    def stage(self, name: str) -> "RedisStore":
        other = RedisStore(self.r, self.root, self.ttl, self.root, name, self.partitions["predict"],
                           self.partitions["warm"])
        other._shared = self._shared
        return other

    @classmethod
    def from_url(cls, url: str, prefix: str = "sc", ttl_seconds: int = 30 * 86400, partitions: int = 1,
                 warm_partitions: int = 1) -> "RedisStore":
        # short timeouts: a call to a Redis that went away fails within seconds, and the worker's
        # own loop (not the client) waits, backs off and retries, keeping its event loop free
        options = dict(socket_timeout=5, socket_connect_timeout=2, health_check_interval=30)
        parts = urlsplit(url)
        if parts.scheme in ("redis+cluster", "rediss+cluster"):
            nodes = [ClusterNode(*_host_port(hp)) for hp in parts.netloc.rsplit("@", 1)[-1].split(",") if hp]
            if not nodes:
                raise ValueError(f"{url!r} names no cluster node: redis+cluster://host:port[,host:port...]")
            query = parse_qs(parts.query)
            auth = parts.netloc.rsplit("@", 1)[0] if "@" in parts.netloc else ""
            user, _, password = auth.partition(":")
            client = RedisCluster(startup_nodes=nodes, ssl=parts.scheme.startswith("rediss"), username=user or None,
                                  connection_class=connection_class(parts.scheme),
                                  password=password or None, **options,
                                  **({"require_full_coverage": query["full_coverage"][0] != "no"}
                                     if "full_coverage" in query else {}))
        else:
            client = redis.Redis.from_url(url, connection_class=connection_class(parts.scheme), **options)
        return cls(client, prefix, ttl_seconds, partitions=partitions, warm_partitions=warm_partitions)

    # ---- keys -----------------------------------------------------------------------------------
    def slot(self, partition: int, stage: str | None = None) -> str:
        """The hash tag of a partition's keys: one slot per partition."""
        return f"{{{self.root}:{stage or self.stage_name}:{partition}}}"

    def _k(self, partition: int, *parts: object) -> str:
        return ":".join((self.slot(partition), *map(str, parts)))

    # ---- reads ----------------------------------------------------------------------------------
    def offset(self, partition: int) -> int:
        return self.position(partition) or 0

    def _offset_key(self, partition: int, source: str = "") -> str:
        return self._k(partition, "offset", source) if source else self._k(partition, "offset")

    def position(self, partition: int, source: str = "") -> int | None:
        value = self.r.get(self._offset_key(partition, source))
        return int(value) if value is not None else None

    def init_offset(self, partition: int, offset: int, source: str = "") -> int:
        key = self._offset_key(partition, source)
        self.r.set(key, offset, nx=True)
        return int(self.r.get(key))

    def blob(self, partition: int) -> bytes | None:
        return self.r.get(self._k(partition, "blob"))

    def queue(self, partition: int, source: int) -> list:
        return [orjson.loads(v) for v in self.r.lrange(self._k(partition, "queue", source), 0, -1)]

    def fetch(self, partition, users, sessions, tracks, epoch=None):
        """Users and sessions of ``partition`` and the global counts of ``tracks`` before
        ``epoch``: ``read_batch``'s round trip."""
        if not users and not sessions and not tracks:
            return {}, {}, {}
        read = self.read_batch(partition, users, sessions, tracks, None if epoch is None else (epoch, epoch))
        return read.users, read.sessions, counts_as_of(read.tracks, epoch, tracks) if tracks else {}

    def read_batch(self, partition, users, sessions, tracks, epochs=None, skip=(), mirrors=None,
                   mirror_limit: int = 200_000):
        """One pipeline, in this order: the records (an MGET in the partition's slot: a cluster
        pipeline takes it as one command), the log-read Function (``READ_SINCE``) for each
        partition in ``mirrors`` and the read Function for each other predict partition not in
        ``skip``, the offset (a GET in the slot, after the others). ``mirror_limit``: the most
        tracks a mirror holds (a partition with more is read per batch)."""
        keys = [self._k(partition, "u", u) for u in users] + [self._k(partition, "s", u, s) for u, s in sessions]
        mirrors = mirrors if tracks and mirrors and self._functions() else {}
        read = [p for p in range(self.partitions["predict"]) if p not in skip and p not in mirrors] if tracks else []

        def call() -> list:
            with self.r.pipeline(transaction=False) as pipe:
                if keys:
                    pipe.execute_command("MGET", *keys)
                for p, (seq, at) in mirrors.items():
                    base = f"{self.slot(p, 'predict')}:tracks"
                    pipe.execute_command("FCALL_RO", READ_SINCE, 5, f"{base}:log", f"{base}:seq", base,
                                         f"{base}:now", f"{base}:last", seq, "" if at is None else at, mirror_limit)
                if read:
                    self._read_tracks(pipe, tracks, epochs, read)
                pipe.get(self._offset_key(partition))
                return pipe.execute()

        got = self._reloading(call)
        position = got.pop()
        got_u, got_s = _records(users, sessions, got.pop(0)) if keys else ({}, {})
        logs = {p: _counts_log(got.pop(0), since) for p, since in mirrors.items()}
        counts: list[TrackCounts | None] = []
        if tracks:
            parts = iter(self._track_counts(got, tracks, epochs))
            counts = [None if p in skip or p in logs else next(parts) for p in range(self.partitions["predict"])]
        return BatchRead(got_u, got_s, counts, int(position) if position is not None else None, logs)

    def stored_counts(self, partition, limit):
        """HGETALLs of the partition's three parts (after an HLEN: none past ``limit``), in its slot."""
        base = self._k(partition, "tracks")
        if self.r.hlen(base) > limit + 1:  # its fields: the tracks and the epoch
            return None
        with self.r.pipeline(transaction=False) as pipe:
            pipe.hgetall(base)
            pipe.hgetall(f"{base}:now")
            pipe.hgetall(f"{base}:last")
            settled, now, last = pipe.execute()
        stored = settled.pop(b"epoch", None)
        return TrackCounts(int(stored) if stored is not None else None, *map(_hash_counts, (settled, now, last)))

    def track_counts(self, tracks, epochs=None):
        """Every predict partition's settled, stored epoch's and previous epoch's counts of
        ``tracks``, those a reader at ``epochs`` needs (``parts_needed``): one call of the read
        Function per predict partition (the ids sent once, the counts that exist come back as
        (field index, value) pairs), pipelined in one round trip; without Functions, HMGETs of
        each part (the stored epoch read with the settled counts), read into the same pairs."""
        if not tracks:
            return []

        def call() -> list:
            with self.r.pipeline(transaction=False) as pipe:
                self._read_tracks(pipe, tracks, epochs)
                return pipe.execute()

        return self._track_counts(self._reloading(call), tracks, epochs)

    def _read_tracks(self, pipe, tracks, epochs, partitions: list[int] | None = None) -> None:
        """Queue ``track_counts``'s reads on ``pipe`` (of ``partitions``, default every one)."""
        functions = self._functions()
        if partitions is None:
            partitions = list(range(self.partitions["predict"]))
        bases = [f"{self.slot(p, 'predict')}:tracks" for p in partitions]
        if functions:
            lo, hi = ("", "") if epochs is None else epochs
            for base in bases:
                pipe.execute_command("FCALL_RO", READ_TRACKS, 3, base, f"{base}:now", f"{base}:last", lo, hi, *tracks)
        else:
            for base in bases:
                pipe.hmget(base, [*tracks, "epoch"])
                pipe.hmget(f"{base}:now", tracks)
                pipe.hmget(f"{base}:last", tracks)

    def _track_counts(self, got: list, tracks, epochs) -> list[TrackCounts]:
        """``_read_tracks``'s replies, decoded. Without Functions, the Function's reply made of
        the HMGETs' (the stored epoch decides which parts count)."""
        if self._shared["functions"]:
            replies = got
        else:
            replies = []
            for j in range(0, len(got), 3):
                stored = got[j].pop()
                now, last = parts_needed(epochs, int(stored) if stored is not None else None)
                replies.append([stored, *([x for i, v in enumerate(values) if v is not None for x in (i + 1, v)]
                                          if wanted else [] for values, wanted in zip(got[j:j + 3],
                                                                                      (True, now, last)))])
        return [TrackCounts(int(stored) if stored is not None else None, *(_unpacked(hits, tracks) for hits in parts))
                for stored, *parts in replies]

    def epoch_plays(self, partition):
        base = self._k(partition, "tracks")
        with self.r.pipeline(transaction=False) as pipe:  # one slot
            pipe.hget(base, "epoch")
            pipe.hgetall(f"{base}:now")
            stored, now = pipe.execute()
        return (int(stored) if stored is not None else None), _hash_counts(now)

    # ---- the commit -----------------------------------------------------------------------------
    def _commands(self, partition: int, changes: Changes, new_offset: int) -> list[tuple]:
        """The batch's commands: each (name, key, *arguments), keys in the partition's slot;
        HINCRBY with any number of (field, increment) pairs. A batch that adds to the track counts
        also logs its plan, with ``new_offset``, for other processes' ``Mirror``s (``READ_SINCE``)."""
        dumps, ttl, k = orjson.dumps, self.ttl, self._k
        cmds: list[tuple] = []
        for u, rec in changes.users.items():
            cmds.append(("SET", k(partition, "u", u), dumps(rec), "EX", ttl))
        for (u, s), rec in changes.sessions.items():
            cmds.append(("SET", k(partition, "s", u, s), dumps(rec), "EX", ttl))
        for u, s in changes.deleted_sessions:
            cmds.append(("DEL", k(partition, "s", u, s)))
        if changes.tracks is not None:
            tracks_key = k(partition, "tracks")
            now_key, last_key = f"{tracks_key}:now", f"{tracks_key}:last"
            turns, settle, last, now = changes.tracks.plan()
            stored = changes.tracks.stored  # known: the sums are written (else added in the server)
            if turns:  # one key per command (the Function's rule): no RENAME or COPY of a bucket
                _write_counts(cmds, tracks_key, settle, None if stored is None else stored.settled)
                cmds.append(("DEL", last_key))
                _write_counts(cmds, last_key, last, {})
                cmds.append(("DEL", now_key))
                cmds.append(("HSET", tracks_key, "epoch", int(changes.tracks.by_epoch[-1][0])))
            _write_counts(cmds, now_key, now, {} if turns else None if stored is None else stored.now)
            log_key = f"{tracks_key}:log"
            plan = [int(changes.tracks.by_epoch[-1][0]), turns, settle if turns else {}, last if turns else {}, now]
            cmds.append(("RPUSH", log_key, b"%d " % new_offset + dumps(plan)))
            cmds.append(("LTRIM", log_key, -LOG_KEEP, -1))
            cmds.append(("INCR", f"{tracks_key}:seq"))
        if changes.blob is not None:
            cmds.append(("SET", k(partition, "blob"), changes.blob))
        for src, entries in changes.queue_push.items():  # one element: a commit's additions
            cmds.append(("RPUSH", k(partition, "queue", src), dumps(entries)))
        for src, n in changes.queue_drop.items():
            if n:
                cmds.append(("LTRIM", k(partition, "queue", src), n, -1))
        for name, values in changes.counters.items():
            key = k(partition, "counters", name, self._epoch(name))
            for f, v in values.items():
                cmds.append(("HINCRBY" if isinstance(v, int) else "HINCRBYFLOAT", key, f, v))
        return cmds

    def commit(self, partition: int, expected_offset: int, new_offset: int, changes: Changes) -> bool:
        cmds = self._commands(partition, changes, new_offset)
        fences = {self._offset_key(partition): (expected_offset, new_offset),
                  **{self._offset_key(partition, name): pair for name, pair in changes.inputs.items()}}
        if self.cluster and self._functions():  # a retried call must find the fence in the server
            return self._commit_in_server(fences, cmds)
        return self._commit_watched(fences, cmds)

    def _commit_in_server(self, fences: dict[str, tuple[int, int]], cmds: list[tuple]) -> bool:
        index: dict[str, int] = {key: i for i, key in enumerate(fences, 1)}
        args: list = [len(fences), *(old for old, _ in fences.values()), *(new for _, new in fences.values())]
        for name, key, *rest in cmds:
            at = index.get(key)
            if at is None:
                at = index[key] = len(index) + 1
            args += [name, at, len(rest), *rest]
        return self._reloading(lambda: self.r.fcall(FUNCTION, len(index), *index, *args) == 1)

    def _reloading(self, call: Callable[[], T]) -> T:
        """``call()``, again after loading the Functions if the server had lost them: a node added
        after start-up, or a server restarted empty (whose reads would otherwise fail for good)."""
        try:
            return call()
        except redis.ResponseError as exc:
            if "function" not in str(exc).lower() or "not found" not in str(exc).lower():
                raise
        self._load_function()
        return call()

    def _commit_watched(self, fences: dict[str, tuple[int, int]], cmds: list[tuple]) -> bool:
        with self.r.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(*fences)
                for current, (expected, _) in zip(pipe.mget(*fences), fences.values()):
                    if (int(current) if current is not None else 0) != expected:
                        pipe.unwatch()
                        return False
                # what each TRACKADD adds to: the counts stored now (only this partition's owner
                # writes them, moving the watched offset with them), or none after a DEL (a turn)
                held: dict[str, dict] = {}
                deleted = set()
                for name, key, *rest in cmds:
                    if name == "DEL":
                        deleted.add(key)
                    elif name == "TRACKADD":
                        fields = rest[0::2]
                        held[key] = {} if key in deleted else dict(zip(fields, pipe.hmget(key, fields)))
                pipe.multi()
                for name, key, *rest in cmds:
                    if name == "HINCRBY":  # (field, increment) pairs, as the Function takes them
                        for j in range(0, len(rest), 2):
                            pipe.execute_command(name, key, rest[j], rest[j + 1])
                    elif name == "TRACKADD":
                        pipe.hset(key, mapping={t: _added(held[key].get(t), d) for t, d in zip(rest[0::2], rest[1::2])})
                    else:
                        pipe.execute_command(name, key, *rest)
                for key, (_, new) in fences.items():
                    pipe.set(key, new)
                pipe.execute()
                return True
            except redis.WatchError as exc:
                lost = exc.__context__  # redis-py ends a watch whose connection died with a WatchError
                if isinstance(lost, (redis.ConnectionError, redis.TimeoutError)):
                    raise lost from None  # Redis away, the batch applied or not: the worker waits, then re-reads
                return False

    def _functions(self) -> bool:
        """Whether the server runs the Functions, asked once (loading them) for the stages' stores."""
        shared = self._shared
        if shared["functions"] is None:
            shared["functions"] = self._load_function()
        return shared["functions"]

    def _load_function(self) -> bool:
        """Load the commit Function on every primary; False where the server has no Functions."""
        try:
            if self.cluster:
                self.r.execute_command("FUNCTION", "LOAD", "REPLACE", FUNCTION_CODE,
                                       target_nodes=RedisCluster.PRIMARIES)
            else:
                self.r.execute_command("FUNCTION", "LOAD", "REPLACE", FUNCTION_CODE)
            return True
        except redis.ResponseError as exc:
            if self.cluster or "unknown command" not in str(exc).lower():
                raise
            return False  # Redis < 7: WATCH/MULTI, whose single-server client does not retry

    # ---- what lives outside the batches ---------------------------------------------------------
    def _epoch(self, name: str) -> int:
        if self._shared["epochs"] is None:
            self.config()
        return self._shared["epochs"].get(name, 0)

    def config(self) -> dict[str, float]:
        """The operators' settings; also reads the counters' epochs (commits follow them)."""
        values = {k.decode(): v.decode() for k, v in self.r.hgetall(f"{self.root}:config").items()}
        self._shared["epochs"] = {k[6:]: int(v) for k, v in values.items() if k.startswith("epoch:")}
        return {k: float(v) for k, v in values.items() if not k.startswith("epoch:")}

    def set_config(self, **values: float) -> None:
        if values:
            self.r.hset(f"{self.root}:config", mapping={k: repr(float(v)) for k, v in values.items()})

    def counters(self, name: str) -> dict[str, float]:
        """The counts of ``name`` since its last reset: every partition's of both stages, summed."""
        epoch = int(self.r.hget(f"{self.root}:config", f"epoch:{name}") or 0)
        with self.r.pipeline(transaction=False) as pipe:
            for stage, n in self.partitions.items():
                for p in range(n):
                    pipe.hgetall(f"{self.slot(p, stage)}:counters:{name}:{epoch}")
            replies = pipe.execute()
        out: dict[str, float] = {}
        for reply in replies:
            for k, v in reply.items():
                text = v.decode()
                value = int(text) if text.lstrip("-").isdigit() else float(text)
                out[k.decode()] = out.get(k.decode(), 0) + value
        return out

    def reset_counters(self, name: str) -> None:
        """A new epoch: the old counts stay where they are (under keys nothing reads)."""
        self._shared["epochs"] = None
        self.r.hincrby(f"{self.root}:config", f"epoch:{name}", 1)

    def check_layout(self) -> None:
        """Refuse (with what to do) a Redis holding this prefix's state in an older layout: before
        partitions had hash tags, or with a track's counts in three fields (``n:``, ``k:``,
        ``l:`` TRACK) rather than one (``COUNTS``). The worker would otherwise start over beside
        it, or misread it, silently."""
        old = self._untagged() + self._counts_by_field()
        if old:
            raise OldLayout(
                f"Redis holds skipcache state in an older layout (keys {', '.join(old[:4])}"
                f"{' ...' if len(old) > 4 else ''}). Run `skipcache state migrate` once with every worker stopped "
                f"(it moves each partition's keys under its hash tag and packs each track's counts into one "
                f"field), or start over from the topics with a new SKIPCACHE_REDIS_PREFIX.")

    def _untagged(self) -> list[str]:
        """Keys that only the layout before hash tags has."""
        root = self.root
        return [key for key in (f"{root}:tracks", f"{root}:0:offset", f"{root}:warm:0:offset") if self.r.exists(key)]

    def _counts_by_field(self) -> list[str]:
        """The predict partitions' ``:tracks`` hashes that hold a track's counts in three fields:
        told by the first field of a scan that is not ``epoch`` (each holds one layout)."""
        old = []
        for p in range(self.partitions["predict"]):
            base = f"{self.slot(p, 'predict')}:tracks"
            for key in (base, f"{base}:now", f"{base}:last"):
                cursor = 0
                while True:
                    cursor, fields = self.r.hscan(key, cursor, count=64)
                    told = next((f for f in fields if f != b"epoch"), None)
                    if told is not None or not cursor:
                        if told is not None and b":" in told:
                            old.append(key)
                        break
        return old

    def migrate_layout(self) -> tuple[int, int]:
        """Move state of the older layouts into this one (every worker stopped): keys of the layout
        before hash tags under the partitions' tags (single server; the global track counts and
        counters become predict partition 0's contributions, their sums unchanged), then every
        track's counts from three fields into one. Returns the keys moved, and those rewritten."""
        moved, packed = self._move_under_tags(), 0
        for key in self._counts_by_field():
            stored = self.r.hgetall(key)
            counts: dict[str, list] = {}
            for f, v in stored.items():
                c, _, t = f.decode().partition(":")
                if t:
                    counts.setdefault(t, [0.0, 0.0, 0.0])["nkl".index(c)] = float(v)
            with self.r.pipeline(transaction=True) as pipe:  # one key: one slot, atomic
                pipe.delete(key)
                if b"epoch" in stored:
                    pipe.hset(key, "epoch", stored[b"epoch"])
                if counts:
                    pipe.hset(key, mapping={t: COUNTS.pack(*c) for t, c in counts.items()})
                pipe.execute()
            packed += 1
        return moved, packed

    def _move_under_tags(self) -> int:
        root, moved = self.root, 0
        if self.cluster:
            if self._untagged():
                raise OldLayout("the layout before hash tags only ever lived on one server: migrate there, then "
                                "move the keys to the cluster")
            return 0
        for raw in list(self.r.scan_iter(match=f"{root}:*", count=1000)):
            key = raw.decode()
            rest = key[len(root) + 1:].split(":")
            if rest[0] == "config":
                continue
            if rest[0] == "tracks":
                new = f"{self.slot(0, 'predict')}:tracks"
            elif rest[0] == "counters":
                new = f"{self.slot(0, 'predict')}:counters:{':'.join(rest[1:])}:0"
            elif rest[0] == "warm" and len(rest) > 2 and rest[1].isdigit():
                new = f"{self.slot(int(rest[1]), 'warm')}:{':'.join(rest[2:])}"
            elif rest[0].isdigit():
                new = f"{self.slot(int(rest[0]), 'predict')}:{':'.join(rest[1:])}"
            else:
                continue
            self.r.rename(key, new)
            moved += 1
        return moved

    def ping(self) -> bool:
        if self.cluster:
            # a cluster client's ping asks one node, and its primaries are those of its last view,
            # which leaves out a dead primary no replica has replaced yet: the state is there when
            # the slot of every partition (and of the config) answers
            self._shared.setdefault("nodes", set()).update(node.name for node in self.r.get_nodes())
            with self.r.pipeline(transaction=False) as pipe:
                for stage, n in self.partitions.items():
                    for p in range(n):
                        pipe.exists(f"{self.slot(p, stage)}:offset")
                pipe.exists(f"{self.root}:config")
                pipe.execute()
            return True
        return bool(self.r.ping())

    def unreachable(self) -> list[str]:
        """The cluster's nodes that do not answer now (empty for one server, or when all do).
        Every node ever seen is asked, not only those the client lists now: once the client has
        refreshed its view, a dead primary without a replica is in no slot map any more."""
        if not self.cluster:
            return []
        seen = self._shared.setdefault("nodes", set())  # also noted by every ping, while all answer
        seen.update(node.name for node in self.r.get_nodes())
        out = []
        for name in sorted(seen):
            host, port = _host_port(name)
            client = redis.Redis(host=host, port=port, socket_timeout=1, socket_connect_timeout=1)
            try:
                client.ping()
            except redis.RedisError:
                out.append(name)
            finally:
                client.close()
        return out


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port or 6379)
