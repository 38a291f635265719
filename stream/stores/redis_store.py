"""Redis StateStore. One MGET per batch to read, one WATCH/MULTI/EXEC per batch to write.

Keys (prefix ``sc`` by default): predict partition p: ``sc:{p}:u:{user}``,
``sc:{p}:s:{user}:{session}`` (orjson lists, with a TTL so idle users expire), ``sc:{p}:blob``
(pending predictions), ``sc:{p}:offset`` (next offset to apply); warm partition q:
``sc:warm:{q}:blob`` (its cache shard), ``sc:warm:{q}:queue:{p}`` (entries of sessions partition p
held back, a list appended to and trimmed by the commits) and ``sc:warm:{q}:offset``; shared: ``sc:tracks`` (the
global track counts, a hash with fields ``n:{track}``, ``k:{track}`` and ``l:{track}`` that
every predict partition increments in its commit), ``sc:config`` (thresholds, a hash) and
``sc:counters:{name}`` (hashes of counts)."""
from __future__ import annotations

import orjson
import redis

from stream.store import Changes


class RedisStore:
    def __init__(self, client: redis.Redis, prefix: str = "sc", ttl_seconds: int = 30 * 86400, root: str | None = None):
        """``root``: the prefix of what stages share (config, counters, track counts)."""
        self.r = client
        self.prefix = prefix
        self.root = root or prefix
        self.ttl = int(ttl_seconds)
        self.tracks_key = f"{self.root}:tracks"

    def stage(self, name: str) -> "RedisStore":
        return RedisStore(self.r, f"{self.root}:{name}", self.ttl, self.root)

    @classmethod
    def from_url(cls, url: str, prefix: str = "sc", ttl_seconds: int = 30 * 86400) -> "RedisStore":
        # short timeouts: a call to a Redis that went away fails within seconds, and the worker's
        # own loop (not the client) waits, backs off and retries, keeping its event loop free
        return cls(redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=30),
                   prefix, ttl_seconds)

    def _k(self, partition: int, *parts: object) -> str:
        return ":".join((self.prefix, str(partition), *map(str, parts)))

    def offset(self, partition: int) -> int:
        return self.position(partition) or 0

    def position(self, partition: int) -> int | None:
        value = self.r.get(self._k(partition, "offset"))
        return int(value) if value is not None else None

    def init_offset(self, partition: int, offset: int) -> int:
        key = self._k(partition, "offset")
        self.r.set(key, offset, nx=True)
        return int(self.r.get(key))

    def blob(self, partition: int) -> bytes | None:
        return self.r.get(self._k(partition, "blob"))

    def queue(self, partition: int, source: int) -> list:
        return [orjson.loads(v) for v in self.r.lrange(self._k(partition, "queue", source), 0, -1)]

    def fetch(self, partition, users, sessions, tracks):
        keys = [self._k(partition, "u", u) for u in users] + [self._k(partition, "s", u, s) for u, s in sessions]
        if not keys and not tracks:
            return {}, {}, {}
        with self.r.pipeline(transaction=False) as pipe:
            if keys:
                pipe.mget(keys)
            if tracks:
                pipe.hmget(self.tracks_key, [f"{c}:{t}" for t in tracks for c in "nkl"])
            replies = pipe.execute()
        loads = orjson.loads
        nu = len(users)
        values = replies[0] if keys else []
        out_u = {u: loads(v) for u, v in zip(users, values[:nu]) if v is not None}
        out_s = {k: loads(v) for k, v in zip(sessions, values[nu:]) if v is not None}
        out_t = {}
        if tracks:
            counts = replies[-1]
            for i, t in enumerate(tracks):
                n, k, likes = counts[3 * i:3 * i + 3]
                if n is not None or likes is not None:
                    out_t[t] = [float(n or 0), float(k or 0), float(likes or 0)]
        return out_u, out_s, out_t

    def commit(self, partition: int, expected_offset: int, new_offset: int, changes: Changes) -> bool:
        offset_key = self._k(partition, "offset")
        dumps = orjson.dumps
        ttl = self.ttl
        with self.r.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(offset_key)
                current = pipe.get(offset_key)
                if (int(current) if current is not None else 0) != expected_offset:
                    pipe.unwatch()
                    return False
                pipe.multi()
                for u, rec in changes.users.items():
                    pipe.set(self._k(partition, "u", u), dumps(rec), ex=ttl)
                for (u, s), rec in changes.sessions.items():
                    pipe.set(self._k(partition, "s", u, s), dumps(rec), ex=ttl)
                if changes.deleted_sessions:
                    pipe.delete(*(self._k(partition, "s", u, s) for u, s in changes.deleted_sessions))
                tracks_key = self.tracks_key
                for t, (n, k, likes) in changes.tracks.items():
                    if n:
                        pipe.hincrby(tracks_key, f"n:{t}", int(n))
                    if k:
                        pipe.hincrby(tracks_key, f"k:{t}", int(k))
                    if likes:
                        pipe.hincrby(tracks_key, f"l:{t}", int(likes))
                if changes.blob is not None:
                    pipe.set(self._k(partition, "blob"), changes.blob)
                for src, entries in changes.queue_push.items():
                    if entries:
                        pipe.rpush(self._k(partition, "queue", src), *map(dumps, entries))
                for src, n in changes.queue_drop.items():
                    if n:
                        pipe.ltrim(self._k(partition, "queue", src), n, -1)
                for name, fields in changes.counters.items():
                    key = f"{self.root}:counters:{name}"
                    for f, v in fields.items():
                        if isinstance(v, int):
                            pipe.hincrby(key, f, v)
                        else:
                            pipe.hincrbyfloat(key, f, v)
                pipe.set(offset_key, new_offset)
                pipe.execute()
                return True
            except redis.WatchError:
                return False

    def config(self) -> dict[str, float]:
        return {k.decode(): float(v) for k, v in self.r.hgetall(f"{self.root}:config").items()}

    def set_config(self, **values: float) -> None:
        if values:
            self.r.hset(f"{self.root}:config", mapping={k: repr(float(v)) for k, v in values.items()})

    def counters(self, name: str) -> dict[str, float]:
        out = {}
        for k, v in self.r.hgetall(f"{self.root}:counters:{name}").items():
            text = v.decode()
            out[k.decode()] = int(text) if text.lstrip("-").isdigit() else float(text)
        return out

    def reset_counters(self, name: str) -> None:
        self.r.delete(f"{self.root}:counters:{name}")

    def ping(self) -> bool:
        return bool(self.r.ping())
