"""The store's commands packed by hiredis in C are the bytes redis-py's own packer sends."""
import pytest
import redis
from redis._parsers.encoders import Encoder
from redis.connection import HiredisRespSerializer, PythonRespSerializer

from stream.stores import redis_wire
from stream.stores.redis_store import RedisStore

pytestmark = pytest.mark.skipif(redis_wire.pack_command is None, reason="hiredis is not installed")

COMMANDS = [
    ("FCALL", "skipcache_commit_v4", 2, "{sc:predict:0}:offset", "{sc:predict:0}:u:7", 1, 10, 20, "SET", 2, 4,
     b'[1,2.5,"x"]', "EX", 2_592_000),
    ("HINCRBY", "{sc:predict:1}:tracks:now", "n:0aBcD", -3),
    ("HINCRBYFLOAT", "k", "f", 0.1), ("HINCRBYFLOAT", "k", "f", 1e-300), ("SET", "k", 10**30),
    ("SET", "ключ", "zażółć gęślą jaźń"), ("SET", b"k", b"\x00\xff\r\n"), ("GET", ""),
    ("CLIENT SETNAME", "skipcache"), ("FUNCTION LOAD", "REPLACE", "#!lua name=x\nreturn 1"),
]


def _theirs():
    enc = Encoder("utf-8", "strict", False)
    return HiredisRespSerializer(PythonRespSerializer(6000, enc.encode).pack, enc.encode)


def test_commands_pack_to_the_bytes_redis_py_sends():
    ours = redis_wire.CPacker(_theirs().pack)
    for cmd in COMMANDS:
        assert b"".join(ours.pack(*cmd)) == b"".join(_theirs().pack(*cmd)), cmd


def test_what_hiredis_does_not_take_goes_to_redis_pys_packer():
    ours = redis_wire.CPacker(_theirs().pack)
    assert b"".join(ours.pack("SET", "k", memoryview(b"abc"))) == b"".join(_theirs().pack("SET", "k", b"abc"))
    for bad in (True, None, [1]):
        with pytest.raises(redis.DataError):
            ours.pack("SET", "k", bad)


@pytest.mark.parametrize("url, kind", [("redis://127.0.0.1:1/0", redis_wire.Connection),
                                       ("rediss://127.0.0.1:1/0", redis_wire.SSLConnectionC),
                                       ("unix:///tmp/none.sock", redis_wire.UnixConnection)])
def test_the_store_connects_with_the_c_packer(url, kind):
    pool = RedisStore.from_url(url).r.connection_pool
    assert pool.connection_class is kind
    assert isinstance(pool.make_connection()._command_packer, redis_wire.CPacker)
