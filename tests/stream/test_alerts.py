"""The alerting rules shipped beside prometheus.yml, through `promtool`: they load, every alert
fires in a case of tests/alerts/cases.yml and stays quiet in another, with the labels and the
annotations it is meant to carry."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "alerts.yml"
CASES = yaml.safe_load((ROOT / "tests" / "alerts" / "cases.yml").read_text())
LABEL = re.compile(r"\{\{\s*\$labels\.(\w+)\s*\}\}")


def _promtool() -> str:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool is not installed (apt-get install -y prometheus; .ci/run does)")
    return tool


def _alerts() -> dict[str, dict]:
    rules = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}


def _render(template: str, labels: dict) -> str:
    assert "$value" not in template  # annotations the tests can state: labels only
    return LABEL.sub(lambda m: str(labels.get(m.group(1), "")), template)


def _unit_test(case: dict) -> dict:
    rule = _alerts()[case["alert"]]
    expected = []
    if "fires" in case:
        labels = {**{k: str(v) for k, v in case["fires"].items()}, **rule.get("labels", {})}
        expected.append({"exp_labels": labels,
                         "exp_annotations": {k: _render(v, labels) for k, v in rule.get("annotations", {}).items()}})
    return {"interval": "1m", "input_series": [{"series": s, "values": v} for s, v in case["series"].items()],
            "alert_rule_test": [{"eval_time": case["eval_time"], "alertname": case["alert"], "exp_alerts": expected}]}


def test_the_rules_load():
    out = subprocess.run([_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_prometheus_yml_loads_the_rules_and_compose_mounts_them():
    cfg = yaml.safe_load((ROOT / "prometheus.yml").read_text())
    assert cfg["rule_files"] == ["alerts.yml"]
    compose = (ROOT / "docker-compose.yml").read_text()
    assert "./alerts.yml:/etc/prometheus/alerts.yml:ro" in compose
    out = subprocess.run([_promtool(), "check", "config", str(ROOT / "prometheus.yml")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_a_case_that_fires_and_one_that_does_not():
    for name in _alerts():
        kinds = {"fires" in c for c in CASES if c["alert"] == name}
        assert kinds == {True, False}, name
    assert {c["alert"] for c in CASES} <= set(_alerts())


@pytest.mark.parametrize("case", CASES, ids=[f"{c['alert']}-{'fires' if 'fires' in c else 'quiet'}-{i}"
                                             for i, c in enumerate(CASES)])
def test_promtool_unit_test(case, tmp_path):
    spec = tmp_path / "test.yml"
    spec.write_text(yaml.safe_dump({"rule_files": [str(RULES)], "evaluation_interval": "1m",
                                    "tests": [_unit_test(case)]}, sort_keys=False))
    out = subprocess.run([_promtool(), "test", "rules", str(spec)], capture_output=True, text=True)
    assert out.returncode == 0, f"{case['why']}:\n{out.stdout}{out.stderr}"
