"""The Grafana dashboard, generated from code so its PromQL is tested against a real Prometheus.

`skipcache dashboard` writes grafana/dashboards/skipcache.json; a test checks the committed file
is this output and that every expression returns data from a Prometheus scraping a live worker."""
from __future__ import annotations

import json
from pathlib import Path

DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
W = "5m"

SHADOW_NET = ('sum by (threshold) (increase(skipcache_shadow_value_total{term="hits"}[1h])) - '
              'sum by (threshold) (increase(skipcache_shadow_value_total{term=~"transfer|storage"}[1h]))')
LIVE_NET = ('sum(increase(skipcache_value_total{term="hits"}[1h])) - '
            'sum(increase(skipcache_value_total{term=~"transfer|storage"}[1h]))')

# (title, unit, [(legend, expr)], kind)
PANELS: list[tuple[str, str, list[tuple[str, str]], str]] = [
    ("Live prediction accuracy", "percentunit", [
        ("overall", f'sum(rate(skipcache_predictions_total{{outcome=~"tp|tn"}}[{W}])) / sum(rate(skipcache_predictions_total[{W}]))'),
        ("{{variant}} {{model}}", f'sum by (variant, model) (rate(skipcache_predictions_total{{outcome=~"tp|tn"}}[{W}])) / sum by (variant, model) (rate(skipcache_predictions_total[{W}]))'),
    ], "timeseries"),
    ("Rolling accuracy (last 1000 predictions)", "percentunit", [
        ("{{variant}} {{model}}", "skipcache_rolling_accuracy"),
    ], "stat"),
    ("Precision and recall of 'played in full'", "percentunit", [
        ("precision {{variant}}", f'sum by (variant) (rate(skipcache_predictions_total{{outcome="tp"}}[{W}])) / sum by (variant) (rate(skipcache_predictions_total{{outcome=~"tp|fp"}}[{W}]))'),
        ("recall {{variant}}", f'sum by (variant) (rate(skipcache_predictions_total{{outcome="tp"}}[{W}])) / sum by (variant) (rate(skipcache_predictions_total{{outcome=~"tp|fn"}}[{W}]))'),
    ], "timeseries"),
    ("Full-play hit ratio", "percentunit", [
        ("full plays found warm", f"sum(rate(skipcache_full_play_hits_total[{W}])) / sum(rate(skipcache_full_plays_total[{W}]))"),
    ], "timeseries"),
    ("Cache hits by tier", "ops", [
        ("{{tier}}", f"sum by (tier) (rate(skipcache_cache_hits_total[{W}]))"),
        ("miss", f"sum(rate(skipcache_cache_misses_total[{W}]))"),
    ], "timeseries"),
    ("Promotions vs wasted", "ops", [
        ("promotions to {{tier}}", f"sum by (tier) (rate(skipcache_promotions_total[{W}]))"),
        ("wasted", f"sum(rate(skipcache_wasted_promotions_total[{W}]))"),
    ], "timeseries"),
    ("Storage cost per day", "none", [
        ("cost/day", "sum(skipcache_storage_cost_per_day)"),
    ], "stat"),
    ("Promotion thresholds", "none", [
        ("{{tier}}", "max by (tier) (skipcache_threshold)"),
    ], "stat"),
    ("Events per second", "ops", [
        ("{{type}}", "sum by (type) (rate(skipcache_events_total[1m]))"),
    ], "timeseries"),
    ("Latency per stage: record to committed state", "s", [
        ("{{stage}} p50", f"histogram_quantile(0.5, sum by (stage, le) (rate(skipcache_event_latency_seconds_bucket[{W}])))"),
        ("{{stage}} p99", f"histogram_quantile(0.99, sum by (stage, le) (rate(skipcache_event_latency_seconds_bucket[{W}])))"),
        ("{{stage}} batch p99",
         f"histogram_quantile(0.99, sum by (stage, le) (rate(skipcache_batch_processing_seconds_bucket[{W}])))"),
    ], "timeseries"),
    ("Consumer lag per stage (from the fetch high-watermark)", "none", [
        ("{{stage}} {{partition}}", "sum by (stage, partition) (skipcache_consumer_lag)"),
    ], "timeseries"),
    ("Rejected events", "ops", [
        ("{{reason}}", f"sum by (reason) (rate(skipcache_rejected_events_total[{W}]))"),
    ], "timeseries"),
    ("What producers send otherwise than the contract asks (README: Producing session events)", "ops", [
        ("misrouted ({{reason}}): key by user id", f"sum by (reason) (rate(skipcache_misrouted_events_total[{W}]))"),
        ("plays without next_track_id", f"sum(rate(skipcache_plays_without_upcoming_total[{W}]))"),
        ("repaired ({{how}})", f"sum by (how) (rate(skipcache_repaired_events_total[{W}]))"),
    ], "timeseries"),
    ("Partitions needing an operator (see /livez, /healthz)", "none", [
        ("stopped {{stage}} {{partition}}", "max by (stage, partition) (skipcache_partition_stopped)"),
        ("unowned {{stage}} {{partition}}", "max by (stage, partition) (skipcache_partition_unowned)"),
        ("stalled {{stage}} {{partition}}", "max by (stage, partition) (skipcache_partition_stalled)"),
        ("late entries/s", f"sum(rate(skipcache_late_entries_total[{W}]))"),
    ], "timeseries"),
    ("Net value by threshold, last hour: shadow placements beside the live one (README: Operating the threshold)",
     "none", [
        ("threshold {{threshold}}", SHADOW_NET),
        ("live", LIVE_NET),
    ], "bargauge"),
    ("Net value by threshold over time (last hour, rolling)", "none", [
        ("threshold {{threshold}}", SHADOW_NET),
        ("live", LIVE_NET),
    ], "timeseries"),
    ("Full-play hit ratio by threshold", "percentunit", [
        ("threshold {{threshold}}", f"sum by (threshold) (rate(skipcache_shadow_full_play_hits_total[{W}])) / "
                                    f"sum by (threshold) (rate(skipcache_shadow_full_plays_total[{W}]))"),
        ("live", f"sum(rate(skipcache_full_play_hits_total[{W}])) / sum(rate(skipcache_full_plays_total[{W}]))"),
    ], "bargauge"),
    ("Models", "none", [
        ("{{variant}}: {{model}} {{version}}", "skipcache_model_info"),
    ], "stat"),
]


def expressions() -> list[str]:
    return [expr for _, _, targets, _ in PANELS for _, expr in targets]


def build() -> dict:
    panels = []
    for i, (title, unit, targets, kind) in enumerate(PANELS):
        panels.append({
            "id": i + 1, "type": kind, "title": title, "datasource": DATASOURCE,
            "gridPos": {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i // 2) * 8},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": _options(kind),
            "targets": [{"refId": chr(65 + j), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
                        for j, (legend, expr) in enumerate(targets)],
        })
    return {"uid": "skipcache", "title": "skipcache: live skip prediction and cache", "schemaVersion": 39,
            "version": 1, "editable": False, "refresh": "10s", "time": {"from": "now-1h", "to": "now"},
            "tags": ["skipcache"], "timezone": "utc", "panels": panels}


def _options(kind: str) -> dict:
    if kind == "timeseries":
        return {"legend": {"displayMode": "list", "placement": "bottom"}}
    if kind == "bargauge":  # one bar per threshold, side by side: the figure against the threshold
        return {"reduceOptions": {"calcs": ["lastNotNull"]}, "orientation": "vertical", "displayMode": "basic",
                "showUnfilled": False}
    return {"reduceOptions": {"calcs": ["lastNotNull"]}, "textMode": "value_and_name"}


def write(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(build(), indent=2) + "\n")
    return path
