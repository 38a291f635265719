"""The deployment files: compose validates, the dashboard is the generator's output, and the
provisioning and scrape config point where the worker listens."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from stream.cli.dashboard import build, expressions

ROOT = Path(__file__).resolve().parents[2]


def _compose(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("SKIPCACHE_API_TOKEN", "GRAFANA_ADMIN_PASSWORD")}
    return subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), *args],
                          capture_output=True, text=True, cwd=ROOT, env={**clean, **env})


def test_docker_compose_config_is_valid_and_needs_its_secrets():
    if not shutil.which("docker-compose"):
        pytest.skip("docker-compose is not installed (apt-get install -y docker-compose)")
    secrets = {"SKIPCACHE_API_TOKEN": "a" * 24, "GRAFANA_ADMIN_PASSWORD": "b" * 16}
    out = _compose("config", "-q", **secrets)
    assert out.returncode == 0, out.stderr
    services = _compose("config", "--services", **secrets).stdout.split()
    assert set(services) >= {"kafka", "redis", "prometheus", "grafana", "predict", "warm", "replay"}
    for missing in secrets:  # no default secret: without either, compose refuses and says which
        out = _compose("config", "-q", **{k: v for k, v in secrets.items() if k != missing})
        assert out.returncode != 0 and missing in out.stderr, out.stderr
    resolved = _compose("config", **secrets).stdout
    assert "GF_SECURITY_ADMIN_PASSWORD: " + "b" * 16 in resolved


def test_committed_dashboard_is_the_generated_one():
    committed = json.loads((ROOT / "grafana" / "dashboards" / "skipcache.json").read_text())
    assert committed == build(), "run `skipcache dashboard` and commit the result"
    titles = " ".join(p["title"].lower() for p in committed["panels"])
    for word in ("accuracy", "precision", "full-play hit ratio", "hits by tier", "wasted", "cost", "threshold",
                 "events per second", "latency", "lag", "rejected"):
        assert word in titles, word


def test_dashboard_uses_the_provisioned_datasource_and_metric_names():
    ds = (ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text()
    assert "uid: prometheus" in ds and "type: prometheus" in ds
    assert "/var/lib/grafana/dashboards" in (ROOT / "grafana" / "provisioning" / "dashboards" / "skipcache.yaml").read_text()
    for expr in expressions():
        assert "skipcache_" in expr
    assert '"predict:6066", "warm:6066"' in (ROOT / "prometheus.yml").read_text()
    assert "SKIPCACHE_WEB_PORT: \"6066\"" in (ROOT / "docker-compose.yml").read_text()


def test_metric_names_follow_prometheus_conventions():
    from stream.worker.metrics import WorkerMetrics

    m = WorkerMetrics()
    for metric in m.registry.collect():
        # ours, or the client library's standard process and collector metrics (every exporter's names)
        assert metric.name.startswith(("skipcache_", "process_", "python_gc_")), metric.name
        for sample in metric.samples:
            assert not {"user", "user_id", "track", "track_id"} & set(sample.labels), sample
        if metric.type == "counter":
            assert any(s.name.endswith("_total") for s in metric.samples) or not metric.samples
        if metric.type == "histogram":
            assert metric.name.endswith("_seconds")
