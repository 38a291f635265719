"""How the Redis store's commands go on the wire: packed by hiredis in C.

redis-py packs a command by encoding each argument in Python first (an ``isinstance`` chain per
argument) and only then calls ``hiredis.pack_command``; a batch commit carries thousands of
arguments, and that loop was ~4% of the worker's time. ``hiredis.pack_command`` encodes str, int,
float and bytes itself, byte for byte as redis-py does (``tests/stream/test_redis_wire.py``);
anything else (a memoryview, or a type both refuse) goes to redis-py's own packer. Plugged in
as the clients' ``connection_class``, which single servers and clusters both take."""
from __future__ import annotations

import redis
from redis.connection import SSLConnection, UnixDomainSocketConnection

try:
    from hiredis import pack_command
except ImportError:  # redis-py's pure-Python packing, unchanged
    pack_command = None


class CPacker:
    def __init__(self, fallback):
        self.fallback = fallback

    def pack(self, *args):
        first = args[0]
        if isinstance(first, str) and " " in first:  # redis-py's "CLIENT SETNAME", "FUNCTION LOAD" ...
            args = (*first.split(), *args[1:])
        try:
            return [pack_command(args)]
        except TypeError:
            return self.fallback(*args)


class _CPacked:
    def _construct_command_packer(self, packer):
        default = super()._construct_command_packer(packer)
        return default if packer is not None or pack_command is None else CPacker(default.pack)


class Connection(_CPacked, redis.Connection):
    pass


class SSLConnectionC(_CPacked, SSLConnection):
    pass


class UnixConnection(_CPacked, UnixDomainSocketConnection):
    pass


def connection_class(scheme: str) -> type:
    """The connection class for a URL scheme (``redis``, ``rediss``, ``unix``, ``+cluster``)."""
    if scheme.startswith("rediss"):
        return SSLConnectionC
    return UnixConnection if scheme == "unix" else Connection
