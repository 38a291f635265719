"""Prometheus scraping a real worker fed by a replay: every dashboard expression returns data.
And an A/B experiment: naive (A) vs LinearSVC (B), reported with a z-test."""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

from models.features import EngineConfig
import orjson
import pytest

from cache_warmer.experiment import variant_of
from models.evaluation import build_table
from stream.cli import main
from stream.cli.dashboard import expressions
from stream.producer import make_producer, replay
from stream.cli.services import free_port, stop_process, wait_for_port
from tests.stream.test_worker_metrics import samples

pytestmark = pytest.mark.integration


def _prometheus(tmp_path, target_port):
    if not shutil.which("prometheus"):
        pytest.skip("prometheus is not installed (apt-get install -y prometheus)")
    port = free_port()
    cfg = tmp_path / "prometheus.yml"
    rules = Path(__file__).resolve().parents[2] / "alerts.yml"
    cfg.write_text(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: ["{rules}"]
scrape_configs:
  - job_name: skipcache-worker
    static_configs:
      - targets: ["127.0.0.1:{target_port}"]
""")
    proc = subprocess.Popen(["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=open(tmp_path / "prom.log", "wb"),
                            stderr=subprocess.STDOUT)
    wait_for_port(port, proc=proc)
    return proc, port


def _wait_scraped(prom_port, worker_port, timeout=30.0):
    """Until Prometheus holds a sample of the worker's plays counter at least as high as it is now."""
    with urllib.request.urlopen(f"http://127.0.0.1:{worker_port}/metrics", timeout=5) as resp:
        now = sum(samples(resp.read().decode(), "skipcache_plays").values())
    assert now > 0, "the worker counted no plays"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = _query(prom_port, "sum(skipcache_plays_total)")
        if got and float(got[0]["value"][1]) >= now:
            return
        time.sleep(0.2)
    raise AssertionError(f"Prometheus scraped no sample of {now} plays in {timeout} s")


def _query(port, expr):
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return [r for r in body["data"]["result"] if r["value"][1] not in ("NaN", "+Inf", "-Inf")]


def test_every_dashboard_expression_returns_data(live, live_data, tmp_path):
    _, ds, events, _ = live_data
    live.env["SKIPCACHE_SHADOW_THRESHOLDS"] = "0.3,0.7"  # the shadow panels need shadows
    worker, port = live.start_worker()
    prom = None
    try:
        prom, prom_port = _prometheus(tmp_path, port)  # skips without prometheus: the worker is stopped below
        producer = make_producer(live.settings.kafka_bootstrap)
        rnd = random.Random(1)
        # two halves a few seconds apart, so rates have samples before and after; some bad lines
        half = len(events) // 2
        replay(events[:half], live.settings.kafka_bootstrap, live.settings.topic_sessions, progress=False, producer=producer)
        for _ in range(20):
            producer.send(live.settings.topic_sessions, key=str(rnd.randrange(99)).encode(), value=b"{broken")
        producer.flush()
        # a scrape of the first half before the second is sent: without it a fast worker can apply both
        # between two scrapes, every rate is 0 and every ratio NaN (CI, stop 32)
        live.wait_applied(half + 20, workers=[worker])
        _wait_scraped(prom_port, port)
        replay(events[half:], live.settings.kafka_bootstrap, live.settings.topic_sessions, speed=None, progress=False,
               producer=producer)
        producer.close()
        live.wait_applied(len(events) + 20, workers=[worker])
        time.sleep(4)  # a few more scrapes
        missing = {}
        deadline = time.monotonic() + 30
        exprs = expressions()
        while exprs and time.monotonic() < deadline:
            missing = {e: None for e in exprs if not _query(prom_port, e)}
            exprs = list(missing)
            if exprs:
                time.sleep(1)
        assert not exprs, f"no data for: {exprs}"
        acc = float(_query(prom_port, 'sum(skipcache_predictions_total{outcome=~"tp|tn"}) / sum(skipcache_predictions_total)')[0]["value"][1])
        fig = main_status(live)
        assert abs(acc - fig["accuracy"]) < 1e-9  # Prometheus counts what Redis counts
        # the shadows' series carry their thresholds; every alerting rule evaluates without error
        assert {r["metric"]["threshold"] for r in _query(prom_port, "skipcache_shadow_plays_total")} == {"0.3", "0.7"}
        with urllib.request.urlopen(f"http://127.0.0.1:{prom_port}/api/v1/rules", timeout=5) as resp:
            groups = json.loads(resp.read())["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        assert len(rules) >= 15 and all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
        assert _query(prom_port, "skipcache:accuracy:1h") and _query(prom_port, "skipcache:shadow_net_value:1h")
    finally:
        if prom is not None:
            stop_process(prom, 20)
        stop_process(worker, 20)


def main_status(live):
    from stream.cli.jobs import live_figures

    return live_figures(live.settings)


def test_ab_report_naive_vs_linear_svc(live, live_data, tmp_path):
    out, ds, events, svc = live_data
    naive = tmp_path / "naive.joblib"
    # B's training window, so B's user half-life: one engine computes both variants' features
    assert main(["train", "--data", str(out / "data"), "--model", "naive", "--out", str(naive), "--train-fraction", "0.5"]) == 0
    live.env.update(SKIPCACHE_MODEL=str(naive), SKIPCACHE_MODEL_B=str(out / "m.joblib"), SKIPCACHE_AB_SHARE_B="0.5",
                    SKIPCACHE_PARTITIONS="1")
    from stream.settings import Settings
    from stream.cli.services import create_topics

    live.settings = Settings.from_env(live.env)
    tag = live.env["SKIPCACHE_APP_ID"]
    live.env["SKIPCACHE_TOPIC_SESSIONS"] = f"ab-{tag}"
    live.settings = Settings.from_env(live.env)
    create_topics(live.settings.kafka_bootstrap, {live.settings.topic_sessions: 1})
    worker, port = live.start_worker()
    try:
        replay(events, live.settings.kafka_bootstrap, live.settings.topic_sessions, progress=False)
        live.wait_applied(len(events), workers=[worker])
        env = {**os.environ, **live.env}
        report = tmp_path / "ab.json"
        run = subprocess.run([sys.executable, "-m", "stream.cli", "ab-report", "--json", str(report)], env=env,
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        result = json.loads(report.read_text())
        assert result["leader"] == "B" and result["p_value"] < 0.05 and result["ci"][0] > 0
        assert "B is ahead (significant at 0.05)" in run.stdout
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ab/results", timeout=5) as resp:
            http = json.loads(resp.read())
        assert http["variants"] == result["variants"] and http["models"]["B"]["model"] == "linear_svc"

        # directly from the predictions' outcomes: every play's features, both models' P(full), its label
        table = build_table(events, ds.catalogue, EngineConfig(**svc.engine_config), progress=False)
        users = np.array([e.user_id for e in events if e.kind == "play"])
        is_b = np.array([variant_of(int(u), 0.5) == "B" for u in users])
        from models.artifacts import load

        for variant, art, mask in (("A", load(naive), ~is_b), ("B", svc, is_b)):
            pred = art.predict_full(table.X[mask]) >= 0.5
            direct = float(np.mean(pred == (table.y[mask] == 1)))
            assert result["variants"][variant]["predictions"] == int(mask.sum())
            assert result["variants"][variant]["accuracy"] == pytest.approx(direct, abs=1e-12), variant

        # every cache command names the variant whose score caused it, and that variant's model
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(live.settings.topic_commands, bootstrap_servers=live.settings.kafka_bootstrap,
                                 auto_offset_reset="earliest", consumer_timeout_ms=5000)
        commands = [orjson.loads(m.value) for m in consumer]
        consumer.close()
        upcoming = [c for c in commands if c["reason"] == "upcoming"]
        assert upcoming and {c["variant"] for c in upcoming} == {"A", "B"}
        assert all(c["model"] == {"A": "naive", "B": "linear_svc"}[c["variant"]] for c in upcoming)
        assert set(commands[0]) >= {"track", "from", "to", "reason", "score", "model", "time"}

        req = urllib.request.Request(f"http://127.0.0.1:{port}/ab/results", method="DELETE")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=5)
        assert err.value.code == 401
        req.add_header("Authorization", "Bearer s3cret")
        assert urllib.request.urlopen(req, timeout=5).status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ab/results", timeout=5) as resp:
            assert json.loads(resp.read())["variants"]["A"]["predictions"] == 0
    finally:
        stop_process(worker, 20)
