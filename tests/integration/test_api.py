"""The worker's HTTP API and runtime thresholds, against a real worker, Tansu and Redis."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import orjson
import pytest

from stream.producer import replay
from stream.cli.services import stop_process

pytestmark = pytest.mark.integration


def _call(method, url, body=None, token=None):
    data = body if isinstance(body, bytes) or body is None else orjson.dumps(body)
    req = urllib.request.Request(url, data=data, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, orjson.loads(err.read())


def test_http_api_and_runtime_threshold(live, live_data):
    _, ds, events, _ = live_data
    worker, port = live.start_worker()
    base = f"http://127.0.0.1:{port}"
    try:
        replay(events[:5000], live.settings.kafka_bootstrap, live.settings.topic_sessions, progress=False)
        live.wait_applied(5000, workers=[worker])
        status, health = _call("GET", f"{base}/healthz")
        assert status == 200 and health["status"] == "ok" and health["stages"] == {"predict": [0], "warm": [0]}

        user = events[100].user_id
        track = next(e.track_id for e in events[:5000] if e.user_id == user and e.track_id)
        status, pred = _call("POST", f"{base}/predict", {"user_id": user, "track_id": track})
        assert status == 200 and 0.0 <= pred["p_full"] <= 1.0 and pred["known_user"] and pred["known_track"]
        assert pred["decision"] in ("slow", "medium", "fast") and pred["model"] == "linear_svc"
        for bad in (b"{nope", {"user_id": "7", "track_id": track}, {"user_id": user, "track_id": "short"}, [1, 2]):
            status, body = _call("POST", f"{base}/predict", bad)
            assert status == 400 and body["error"]

        assert _call("GET", f"{base}/threshold") == (200, {"threshold": 0.5, "fast_threshold": 0.95})
        assert _call("PUT", f"{base}/threshold", {"threshold": 0.7})[0] == 401
        assert _call("PUT", f"{base}/threshold", {"threshold": 0.7}, token="wrong")[0] == 401
        for bad in ({"threshold": 1.5}, {"threshold": -0.1}, {"threshold": "high"}, {"other": 1}, b"not json"):
            status, body = _call("PUT", f"{base}/threshold", bad, token="s3cret")
            assert status == 400 and body["error"], bad
        assert _call("PUT", f"{base}/threshold", {"threshold": 0.7}, token="s3cret") == (
            200, {"threshold": 0.7, "fast_threshold": 0.95})

        # the CLI writes to Redis; every partition of every worker uses it within a second
        env = {**os.environ, **live.env}
        out = subprocess.run([sys.executable, "-m", "stream.cli", "threshold", "set", "0.3"], env=env,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        changed = time.monotonic()
        while time.monotonic() - changed < 1.0:
            in_use = _call("GET", f"{base}/healthz")[1]["thresholds_in_use"]
            if all(v[0] == 0.3 for v in in_use.values()):
                break
            time.sleep(0.05)
        assert all(v[0] == 0.3 for v in in_use.values()), in_use
        out = subprocess.run([sys.executable, "-m", "stream.cli", "threshold", "show"], env=env,
                             capture_output=True, text=True, timeout=60)
        assert "threshold 0.300" in out.stdout
        out = subprocess.run([sys.executable, "-m", "stream.cli", "threshold", "set", "2"], env=env,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and "within [0, 1]" in out.stderr

        # failed token attempts are logged (never the token) and throttled per client
        statuses = [_call("PUT", f"{base}/threshold", {"threshold": 0.7}, token="guess-Zq81")[0] for _ in range(12)]
        assert statuses[:8] == [401] * 8 and statuses[-1] == 429
        assert _call("PUT", f"{base}/threshold", {"threshold": 0.7}, token="s3cret")[0] == 429  # until the minute ends
        log = (live.workdir / "w.log").read_text()
        assert "refused PUT /threshold from 127.0.0.1: no valid token" in log and "guess-Zq81" not in log
        assert log.count("refused PUT /threshold") <= 2  # once a minute per client, with the count
        assert worker.poll() is None
    finally:
        stop_process(worker, 20)


def test_without_a_token_changes_are_forbidden_and_reads_stay_open(live):
    live.env["SKIPCACHE_API_TOKEN"] = ""
    worker, port = live.start_worker("no-token")
    base = f"http://127.0.0.1:{port}"
    try:
        for method, path, body in (("PUT", "/threshold", {"threshold": 0.7}), ("DELETE", "/ab/results", None)):
            for token in (None, "anything-at-all-here"):
                status, answer = _call(method, f"{base}{path}", body, token=token)
                assert status == 403 and "SKIPCACHE_API_TOKEN" in answer["error"], (method, path, token)
        assert _call("GET", f"{base}/threshold") == (200, {"threshold": 0.5, "fast_threshold": 0.95})
        assert _call("GET", f"{base}/ab/results")[0] == 200
    finally:
        stop_process(worker, 20)
    assert "anything-at-all-here" not in (live.workdir / "no-token.log").read_text()


@pytest.mark.parametrize("token", ["", "short-token"])
def test_the_worker_refuses_to_bind_every_address_without_a_real_token(live, token):
    env = {**os.environ, **live.env, "SKIPCACHE_WEB_HOST": "0.0.0.0", "SKIPCACHE_API_TOKEN": token}
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "stream.cli", "worker"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 2 and "at least 16 characters" in run.stderr and "0.0.0.0" in run.stderr
    assert time.monotonic() - started < 30  # refused at once, before joining the group
    if token:
        assert token not in run.stderr + run.stdout


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


def _raw_post(port: int, head: bytes, body_chunks) -> bytes:
    """Send a request by hand (a lying Content-Length, or a long chunked body) and read the answer."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        try:
            for chunk in body_chunks:
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the worker answered and closed before the body ended: what we want
        try:
            return sock.recv(4096)
        except ConnectionResetError:
            return b""


def test_oversized_bodies_get_413_unread_and_status_json(live, live_data, tmp_path):
    _, _, events, _ = live_data
    worker, port = live.start_worker()
    try:
        replay(events[:3000], live.settings.kafka_bootstrap, live.settings.topic_sessions, progress=False)
        live.wait_applied(3000, workers=[worker])
        before = _rss_kib(worker.pid)
        # a declared 512 MB body: refused by its Content-Length, before a byte of it is read
        answer = _raw_post(port, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: 536870912\r\n\r\n", [b"{" * 4096])
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        # a chunked 64 MB body with no length: refused once it passes the limit
        chunk = b"%x\r\n%s\r\n" % (1 << 20, b"x" * (1 << 20))
        answer = _raw_post(port, b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
                           (chunk for _ in range(64)))
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert _call("PUT", f"http://127.0.0.1:{port}/threshold", b"[" + b"0," * 20_000 + b"0]", token="s3cret")[0] == 413
        assert _rss_kib(worker.pid) - before < 20_000  # memory does not grow with what a client sends
        assert _call("GET", f"http://127.0.0.1:{port}/healthz")[0] == 200  # and the worker is fine

        # every reporting command's --json (integer partition keys once crashed `status --json`)
        env = {**os.environ, **live.env}
        for command in (["status"], ["ab-report"]):
            out = tmp_path / f"{command[0]}.json"
            run = subprocess.run([sys.executable, "-m", "stream.cli", *command, "--json", str(out)], env=env,
                                 capture_output=True, text=True, timeout=60)
            assert run.returncode == 0, run.stderr
            assert orjson.loads(out.read_bytes())
        status = orjson.loads((tmp_path / "status.json").read_bytes())
        assert sum(status["offsets"]["predict"].values()) == 3000 and status["predictions"] > 0
    finally:
        stop_process(worker, 20)
