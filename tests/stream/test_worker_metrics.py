"""The worker's metrics taken a batch at a time read as prometheus_client's own would, value by
value."""
import random

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

from cache_warmer.effects import Outcome
from stream.worker.metrics import BatchHistogram, WorkerMetrics
from stream.worker.stages.partition import BatchOutput


def samples(registry_text: str, name: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(registry_text) if f.name == name for s in f.samples
            if not s.name.endswith("_created")}


def test_a_batch_histogram_exposes_what_observing_each_value_would():
    from prometheus_client import generate_latest

    buckets = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
    mine, theirs = CollectorRegistry(), CollectorRegistry()
    batch = BatchHistogram("lat_seconds", "latency", "stage", buckets, mine)
    reference = Histogram("lat_seconds", "latency", ["stage"], buckets=buckets, registry=theirs)
    rng = random.Random(7)
    for stage in ("predict", "warm", "predict"):
        values = [rng.choice((0.0, 0.005, 0.01, 60.0, 61.0)) if rng.random() < 0.2 else rng.expovariate(3.0)
                  for _ in range(rng.randrange(1, 500))]  # bounds themselves and past the last bucket
        batch.observe(stage, values)
        for v in values:
            reference.labels(stage).observe(v)
    got, want = samples(generate_latest(mine).decode(), "lat_seconds"), samples(generate_latest(theirs).decode(), "lat_seconds")
    assert got.keys() == want.keys() and len(got) == 2 * (len(buckets) + 3)
    for key, value in want.items():
        assert abs(got[key] - value) < 1e-9, key


def test_predictions_and_the_rolling_accuracy_are_counted_per_batch_as_per_prediction():
    m = WorkerMetrics(window=50)
    cells = ["tp", "fp", "tn", "fn"]
    rng = random.Random(3)
    seen = []
    for _ in range(6):
        out = BatchOutput("predict", 0, 0, 10)
        out.outcomes = [Outcome(rng.choice(("A", "B")), rng.choice(cells)) for _ in range(rng.randrange(0, 40))]
        out.timestamps = [1.0] * len(out.outcomes)
        seen += out.outcomes
        m.sensor({"A": "linear_svc", "B": "hist_gb"})(out, 0.1)
    got = samples(m.render().decode(), "skipcache_predictions")
    for variant, model in (("A", "linear_svc"), ("B", "hist_gb")):
        for cell in cells:
            n = sum(1 for o in seen if o == (variant, cell))
            key = ("skipcache_predictions_total", (("model", model), ("outcome", cell), ("variant", variant)))
            assert got.get(key, 0.0) == n
        last = [o.correct for o in seen if o.variant == variant][-50:]
        gauge = samples(m.render().decode(), "skipcache_rolling_accuracy")
        assert gauge[("skipcache_rolling_accuracy", (("model", model), ("variant", variant)))] == sum(last) / len(last)
    latency = samples(m.render().decode(), "skipcache_event_latency_seconds")
    assert latency[("skipcache_event_latency_seconds_count", (("stage", "predict"),))] == len(seen)


def test_the_metrics_tell_the_process_s_collections_and_memory():
    """Operators see the collector's work beside the worker's (``tune_process`` sets it by the
    batch size); a collection run here shows in the next scrape."""
    import gc

    m = WorkerMetrics()
    before = samples(m.render().decode(), "python_gc_collections")
    gc.collect(0)
    after = samples(m.render().decode(), "python_gc_collections")
    key = ("python_gc_collections_total", (("generation", "0"),))
    assert after[key] >= before[key] + 1
    memory = samples(m.render().decode(), "process_resident_memory_bytes")
    assert memory[("process_resident_memory_bytes", ())] > 10_000_000
