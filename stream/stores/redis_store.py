"""Redis StateStore. One MGET per batch to read, one WATCH/MULTI/EXEC per batch to write.

Keys (prefix ``sc`` by default): ``sc:{p}:u:{user}``, ``sc:{p}:s:{user}:{session}``,
``sc:{p}:t:{track}`` (orjson lists, with a TTL so idle users and tracks expire), ``sc:{p}:warmer``
(the partition's cache shard and pending predictions), ``sc:{p}:offset`` (next offset to apply),
``sc:config`` (thresholds, a hash) and ``sc:counters:{name}`` (hashes of counts)."""
from __future__ import annotations

import orjson
import redis

from stream.store import Changes


class RedisStore:
    def __init__(self, client: redis.Redis, prefix: str = "sc", ttl_seconds: int = 30 * 86400):
        self.r = client
        self.prefix = prefix
        self.ttl = int(ttl_seconds)

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

    def warmer(self, partition: int) -> bytes | None:
        return self.r.get(self._k(partition, "warmer"))

    def fetch(self, partition, users, sessions, tracks):
        keys = ([self._k(partition, "u", u) for u in users] + [self._k(partition, "s", u, s) for u, s in sessions]
                + [self._k(partition, "t", t) for t in tracks])
        if not keys:
            return {}, {}, {}
        values = self.r.mget(keys)
        loads = orjson.loads
        nu, ns = len(users), len(sessions)
        out_u = {u: loads(v) for u, v in zip(users, values[:nu]) if v is not None}
        out_s = {k: loads(v) for k, v in zip(sessions, values[nu:nu + ns]) if v is not None}
        out_t = {t: loads(v) for t, v in zip(tracks, values[nu + ns:]) if v is not None}
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
                for t, rec in changes.tracks.items():
                    pipe.set(self._k(partition, "t", t), dumps(rec), ex=ttl)
                if changes.warmer is not None:
                    pipe.set(self._k(partition, "warmer"), changes.warmer)
                for name, fields in changes.counters.items():
                    key = f"{self.prefix}:counters:{name}"
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
        return {k.decode(): float(v) for k, v in self.r.hgetall(f"{self.prefix}:config").items()}

    def set_config(self, **values: float) -> None:
        if values:
            self.r.hset(f"{self.prefix}:config", mapping={k: repr(float(v)) for k, v in values.items()})

    def counters(self, name: str) -> dict[str, float]:
        out = {}
        for k, v in self.r.hgetall(f"{self.prefix}:counters:{name}").items():
            text = v.decode()
            out[k.decode()] = int(text) if text.lstrip("-").isdigit() else float(text)
        return out

    def reset_counters(self, name: str) -> None:
        self.r.delete(f"{self.prefix}:counters:{name}")

    def ping(self) -> bool:
        return bool(self.r.ping())
