"""State store backends, one file each, chosen by the URL's scheme (like faust's stores).

Adding a backend: a module with a class that has the StateStore methods (stream/store.py) and
a ``from_url(url, prefix, ttl_seconds, partitions=, warm_partitions=)`` class method, and one line in STORES."""
from __future__ import annotations

import importlib
from urllib.parse import urlsplit

STORES = {
    "redis": "stream.stores.redis_store:RedisStore",
    "rediss": "stream.stores.redis_store:RedisStore",
    "unix": "stream.stores.redis_store:RedisStore",
    "redis+cluster": "stream.stores.redis_store:RedisStore",
    "rediss+cluster": "stream.stores.redis_store:RedisStore",
    "memory": "stream.stores.memory:MemoryStore",
}


def store_from_url(url: str, prefix: str = "sc", ttl_seconds: int = 30 * 86400, partitions: int = 1,
                   warm_partitions: int = 1):
    """``partitions``, ``warm_partitions``: each stage's (counts are summed over them)."""
    scheme = urlsplit(url).scheme
    target = STORES.get(scheme)
    if target is None:
        raise ValueError(f"no state store for {url!r}: the scheme must be one of {', '.join(sorted(STORES))}")
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name).from_url(url, prefix, ttl_seconds, partitions=partitions,
                                                                   warm_partitions=warm_partitions)
